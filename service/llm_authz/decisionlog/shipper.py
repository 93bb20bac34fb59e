"""The decision-log shipper: every decision record, to a collector, the way OPA's decision-log plugin
sends them, from the durable audit log, at least once, in order, without ever slowing a check.

- Reads the audit directory (every chain; see tail.py) from the position in
  `cursors/decision-log.json`, in its own thread: a check never waits for it, and a check's
  record is durable before the check is answered, so what is shipped is what was decided.
- Sends batches as OPA does: `POST <url>` with a gzip-compressed JSON array of OPA
  decision-log events (audit/export.py builds them: `decision_id`, `path`, `input`, `result`,
  `timestamp`, `labels`, `bundles`, ...), `Content-Encoding: gzip`. Within a chain events go in
  seq order; chains are merged by time.
- Any 2xx delivers the batch and moves the cursor past it (atomically, fsynced). Anything else,
  or no answer, is retried with exponential backoff and jitter, the same batch again, for as
  long as it takes: nothing is dropped, and a restart resumes from the cursor. A collector sees
  a batch twice only if it accepted it and the answer (or the cursor write) was lost, so it
  should drop repeated `decision_id`s.
- Metrics: events and batches shipped, failures by reason, the age of the oldest record not
  yet delivered (lag), records read but not delivered.
"""

from __future__ import annotations

import gzip
import heapq
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson

from llm_authz import __version__, metrics
from llm_authz.audit import segments
from llm_authz.audit.chain import DECISION
from llm_authz.audit.export import opa_event
from llm_authz.decisionlog.cursor import Cursor, Position
from llm_authz.decisionlog.tail import ChainTail
from llm_authz.urls import loggable_url

log = logging.getLogger("llm_authz.decisionlog")
CURSOR_NAME = "decision-log"
_KINDS = frozenset({DECISION})


@dataclass(frozen=True)
class ShipperOptions:
    batch_records: int = 1000
    batch_bytes: int = 4 * 1024 * 1024  # uncompressed JSON
    poll_seconds: float = 0.2  # how often a caught-up shipper looks for new records
    min_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 10.0
    labels: tuple[tuple[str, str], ...] = ()


def _epoch(when: Any) -> float | None:
    try:
        return datetime.strptime(str(when), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


class Shipper:
    def __init__(self, audit_dir: Path, url: str, options: ShipperOptions | None = None,
                 cursor_name: str = CURSOR_NAME):
        self.audit_dir = Path(audit_dir)
        self.url = url
        self.options = options or ShipperOptions()
        self.cursor = Cursor(self.audit_dir, cursor_name)
        self.positions: dict[str, Position] = self.cursor.load()
        self._tails: dict[str, ChainTail] = {}
        self._pending: dict[str, deque[tuple[int, dict[str, Any]]]] = {}
        self._read_up_to: dict[str, int] = {}
        self._client = httpx.Client(timeout=self.options.timeout_seconds, headers={
            "content-type": "application/json", "content-encoding": "gzip",
            "user-agent": f"llm-authz/{__version__} decision-log"})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shipped = 0

    # ---- reading ------------------------------------------------------------------------------

    def _chains(self) -> list[str]:
        try:
            found = {s.chain for s in segments.list_segments(self.audit_dir)}
        except OSError:
            return sorted(self._tails)
        return sorted(found | set(self._tails))

    def _fill(self) -> None:
        for chain in self._chains():
            tail = self._tails.get(chain)
            if tail is None:
                start = self.positions.get(chain, Position(0, "")).seq
                tail = self._tails[chain] = ChainTail(self.audit_dir, chain, start)
                self._pending[chain] = deque()
                self._read_up_to[chain] = start
            room = self.options.batch_records - len(self._pending[chain])
            if room <= 0:
                continue
            got = tail.read(room, _KINDS)
            self._pending[chain].extend(got.records)
            self._read_up_to[chain] = max(self._read_up_to[chain], got.last_seq)

    def _take_batch(self) -> list[tuple[str, int, bytes]]:
        """The next events in order: each chain's in seq order, chains merged by time."""
        several = len(self._pending) > 1
        heads = [(q[0][1].get("time", ""), chain, 0) for chain, q in self._pending.items() if q]
        heapq.heapify(heads)
        taken: list[tuple[str, int, bytes]] = []
        size = 0
        while heads and len(taken) < self.options.batch_records and size < self.options.batch_bytes:
            _, chain, index = heapq.heappop(heads)
            seq, record = self._pending[chain][index]
            event = orjson.dumps(opa_event(record, dict(self.options.labels) or None, chain if several else None))
            taken.append((chain, seq, event))
            size += len(event)
            if index + 1 < len(self._pending[chain]):
                nxt = self._pending[chain][index + 1][1]
                heapq.heappush(heads, (nxt.get("time", ""), chain, index + 1))
        return taken

    # ---- sending ------------------------------------------------------------------------------

    def _post(self, events: list[bytes]) -> str | None:
        """None when delivered, else why not (a short reason for the failures metric)."""
        body = gzip.compress(b"[" + b",".join(events) + b"]", compresslevel=1)
        try:
            r = self._client.post(self.url, content=body)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError:
            return "connection"
        if 200 <= r.status_code < 300:
            return None
        return f"http_{r.status_code // 100}xx"

    def _delivered(self, batch: list[tuple[str, int, bytes]]) -> None:
        done: dict[str, int] = {}
        for chain, _, _ in batch:
            done[chain] = done.get(chain, 0) + 1
        for chain, count in done.items():
            for _ in range(count):
                self._pending[chain].popleft()
        for chain, queue in self._pending.items():
            # Everything read up to the first undelivered decision is delivered (non-decisions too).
            seq = queue[0][0] - 1 if queue else self._read_up_to[chain]
            old = self.positions.get(chain)
            if old is None or seq > old.seq:
                tail = self._tails[chain]
                self.positions[chain] = Position(seq, tail.segment.name if tail.segment else "")
        self.cursor.save(self.positions)

    def _update_lag(self) -> None:
        oldest = None
        pending = 0
        for queue in self._pending.values():
            pending += len(queue)
            if queue:
                when = _epoch(queue[0][1].get("time"))
                if when is not None and (oldest is None or when < oldest):
                    oldest = when
        metrics.DECISION_LOG_PENDING.set(pending)
        metrics.DECISION_LOG_LAG.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    def step(self) -> int:
        """Read what is new and deliver one batch (retrying until it is delivered or stop is asked).

        Returns the number of events delivered (0 when there was nothing to send).
        """
        self._fill()
        self._update_lag()
        batch = self._take_batch()
        if not batch:
            moved = False
            for chain, seq in self._read_up_to.items():  # records that are not decisions still move it
                if seq > self.positions.get(chain, Position(0, "")).seq:
                    moved = True
            if moved:
                self._delivered([])
            return 0
        attempt = 0
        while True:
            reason = self._post([event for _, _, event in batch])
            if reason is None:
                break
            attempt += 1
            metrics.DECISION_LOG_FAILURES.labels(reason=reason).inc()
            delay = min(self.options.max_backoff_seconds, self.options.min_backoff_seconds * 2 ** min(attempt, 30))
            delay *= random.uniform(0.5, 1.0)
            if attempt == 1 or attempt % 10 == 0:
                log.warning("decision log: collector %s failed (%s, attempt %d), retrying in %.1fs; "
                            "nothing is lost", loggable_url(self.url), reason, attempt, delay)
            self._update_lag()
            if self._stop.wait(delay):
                return 0
        self._delivered(batch)
        self.shipped += len(batch)
        metrics.DECISION_LOG_EVENTS.inc(len(batch))
        metrics.DECISION_LOG_BATCHES.inc()
        metrics.DECISION_LOG_LAST_SUCCESS.set(time.time())
        self._update_lag()
        return len(batch)

    # ---- running ------------------------------------------------------------------------------

    def start(self) -> None:
        def run() -> None:
            log.info("decision log: shipping %s to %s from %s", self.audit_dir, loggable_url(self.url),
                     {c: p.seq for c, p in self.positions.items()} or "the start")
            while not self._stop.is_set():
                try:
                    sent = self.step()
                except Exception:  # noqa: BLE001 - the shipper must outlive any one bad read
                    log.exception("decision log: shipping step failed; retrying")
                    metrics.DECISION_LOG_FAILURES.labels(reason="internal").inc()
                    self._stop.wait(1.0)
                    continue
                if sent < self.options.batch_records:
                    self._stop.wait(self.options.poll_seconds)

        self._thread = threading.Thread(target=run, name="decision-log", daemon=True)
        self._thread.start()

    def close(self, drain_seconds: float = 0.0) -> None:
        """Stop; with drain_seconds, first keep shipping until caught up or the time is spent."""
        end = time.monotonic() + drain_seconds
        while drain_seconds and time.monotonic() < end and self._thread is not None:
            if sum(len(q) for q in self._pending.values()) == 0 and not self._behind():
                break
            time.sleep(0.05)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.options.timeout_seconds + 1)
        for tail in self._tails.values():
            tail.close()
        self._client.close()

    def _behind(self) -> bool:
        return any(seq > self.positions.get(c, Position(0, "")).seq for c, seq in self._read_up_to.items())
