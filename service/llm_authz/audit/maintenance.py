"""The audit directory's upkeep, off the check path: compress closed segments, apply retention,
publish storage metrics. One background thread per chain writer; it touches only its own chain's
segments (another process may be compressing or pruning its own right now).

It runs when the writer closes a segment (`segment_closed`), at start (segments closed before a
crash or restart), and every `interval` seconds (age-based retention needs time to pass). A
failure is logged and counted and tried again next time: it never reaches a check.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz import metrics
from llm_authz.audit import compress, retention, segments
from llm_authz.errors import LlmAuthzError

log = logging.getLogger("llm_authz.audit")


class Maintenance:
    """Compression and retention for one chain of an audit directory."""

    def __init__(self, directory: Path, chain: str = segments.MAIN_CHAIN, codec: str = "none",
                 policy: retention.Policy | None = None, signing_key: Ed25519PrivateKey | None = None,
                 interval: float = 60.0):
        if codec not in ("none", *segments.CODECS):
            raise ValueError(f"unknown audit compression {codec!r}")
        self.directory = Path(directory)
        self.chain = chain
        self.codec = codec
        self.policy = policy or retention.Policy()
        self.signing_key = signing_key
        self.interval = interval
        self._cond = threading.Condition()
        self._pending = True  # a pass at start
        self._stopping = False
        self._passes = 0
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"audit-maintenance-{self.chain}", daemon=True)
        self._thread.start()

    def segment_closed(self) -> None:
        """The writer closed a segment: compress it (and apply retention) soon."""
        with self._cond:
            self._pending = True
            self._cond.notify()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no pass is pending or running (tests, shutdown). False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._pending = True
            self._cond.notify()
            target = self._passes + (2 if self._running else 1)  # a pass that started before this call may miss work
            while self._passes < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stopping:
                    self._cond.wait(self.interval)
                if self._stopping:
                    return
                self._pending = False
                self._running = True
            try:
                self.run_once()
            except Exception:  # keep going: the next pass tries again
                log.exception("audit maintenance failed")
                metrics.AUDIT_MAINTENANCE_ERRORS.labels(kind="internal").inc()
            with self._cond:
                self._running = False
                self._passes += 1
                self._cond.notify_all()

    def run_once(self) -> None:
        """One pass: finish interrupted work, compress closed segments, prune, update the gauges."""
        compress.finish_interrupted(self.directory, self.chain)
        if self.codec != "none":
            self._compress_closed()
        if self.policy.active:
            self._apply_retention()
        self.publish()

    def _closed(self) -> list[segments.Segment]:
        mine = [s for s in segments.list_segments(self.directory) if s.chain == self.chain]
        return mine[:-1]  # the newest is open

    def _compress_closed(self) -> None:
        for seg in self._closed():
            if seg.compressed or self._stopping:
                continue
            try:
                before = seg.path.stat().st_size
                after = compress.compress_segment(seg.path, self.codec).stat().st_size
            except (LlmAuthzError, OSError) as exc:
                log.error("audit segment not compressed (kept plain, tried again later): %s", exc)
                metrics.AUDIT_MAINTENANCE_ERRORS.labels(kind="compress").inc()
                return
            metrics.AUDIT_COMPRESSED_IN_BYTES.inc(before)
            metrics.AUDIT_COMPRESSED_OUT_BYTES.inc(after)
            log.info("audit segment %s compressed: %d -> %d bytes", seg.name, before, after)

    def _apply_retention(self) -> None:
        try:
            already = {(e["chain"], e["segment"]) for _, e in retention.read_pruned(self.directory)}
            for candidate in retention.plan(self.directory, self.chain, self.policy):
                if self._stopping:
                    return
                entry = retention.prune(self.directory, candidate, self.signing_key, already)
                metrics.AUDIT_PRUNED_SEGMENTS.labels(reason=candidate.reason).inc()
                log.info("audit segment %s pruned (%s): seq %d..%d%s", candidate.segment.name, candidate.reason,
                         candidate.segment.first_seq, candidate.last_seq,
                         "" if entry is not None else " (already in the manifest)")
        except (LlmAuthzError, OSError) as exc:
            log.error("audit retention stopped (tried again later): %s", exc)
            metrics.AUDIT_MAINTENANCE_ERRORS.labels(kind="retention").inc()

    def publish(self) -> None:
        """Set the storage gauges from what is on disk now."""
        plain = packed = 0
        for seg in segments.list_segments(self.directory):
            try:
                size = seg.path.stat().st_size
            except OSError:
                continue
            if seg.compressed:
                packed += size
            else:
                plain += size
        metrics.AUDIT_DISK_BYTES.labels(form="plain").set(plain)
        metrics.AUDIT_DISK_BYTES.labels(form="compressed").set(packed)
        oldest = retention.oldest_kept_time(self.directory)
        if oldest is not None:
            metrics.AUDIT_OLDEST_RECORD.set(oldest)
        try:
            fs = os.statvfs(self.directory)
        except OSError:
            return
        metrics.AUDIT_FS_SIZE_BYTES.set(fs.f_blocks * fs.f_frsize)
        metrics.AUDIT_FS_FREE_BYTES.set(fs.f_bavail * fs.f_frsize)
