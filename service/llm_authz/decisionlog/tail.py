"""Following one chain of a live audit log from a seq onwards: whole records only, in seq order.

Segments are found and opened through audit/segments.py, so a closed segment that was
compressed in the meantime reads like the plain file it replaced. The open segment is read up
to its last complete line; a line still being written is read again next time. When the chain
has a newer segment, the current one is finished (it is closed) and the next one opened.
The file handle stays open while a segment is read, so compressing it (which removes the plain
file) does not disturb the reader.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import IO, Any

import orjson

from llm_authz.audit import segments

log = logging.getLogger("llm_authz.decisionlog")


@dataclass
class Read:
    """What one read brought: records (seq order) and the last seq consumed (decision or not)."""

    records: list[tuple[int, dict[str, Any]]]
    last_seq: int


class ChainTail:
    def __init__(self, audit_dir: Path, chain: str, after_seq: int):
        self.audit_dir = Path(audit_dir)
        self.chain = chain
        self.next_seq = after_seq + 1
        self.segment: segments.Segment | None = None
        self._fh: IO[bytes] | None = None  # the plain (open or closed) segment being read
        self._lines: Iterator[bytes] | None = None  # a compressed (closed) segment being read
        self.skipped = 0  # records that were gone (pruned) before they could be read

    def _segments(self) -> list[segments.Segment]:
        return [s for s in segments.list_segments(self.audit_dir) if s.chain == self.chain]

    def _open(self, seg: segments.Segment) -> None:
        self.close()
        for _ in range(5):
            try:
                if seg.compressed:
                    lines = segments.iter_lines(seg.path)
                    first = next(lines, None)  # opens the file now, so a vanished one shows here
                    self._lines = itertools.chain([first] if first is not None else [], lines)
                else:
                    self._fh = seg.path.open("rb")
                self.segment = seg
                return
            except FileNotFoundError:
                # Compressed between listing and opening: the compressed copy is there now.
                again = [s for s in self._segments() if s.first_seq == seg.first_seq]
                if not again:
                    break
                seg = again[0]
        raise FileNotFoundError(f"segment {seg.name} of chain {self.chain} disappeared while opening it")

    def _readline(self) -> bytes:
        if self._fh is not None:
            return self._fh.readline()
        assert self._lines is not None
        return next(self._lines, b"")

    def _newer(self) -> segments.Segment | None:
        current = self.segment.first_seq if self.segment else -1
        later = [s for s in self._segments() if s.first_seq > current]
        return min(later, key=lambda s: s.first_seq) if later else None

    def read(self, limit: int, kinds: frozenset[str]) -> Read:
        """Up to `limit` records of `kinds` after the position; advances past other kinds too."""
        out: list[tuple[int, dict[str, Any]]] = []
        last = self.next_seq - 1
        if self._fh is None and self._lines is None and not self._start():
            return Read(out, last)
        while len(out) < limit:
            pos = self._fh.tell() if self._fh is not None else 0
            line = self._readline()
            if line.endswith(b"\n"):
                try:
                    record = orjson.loads(line)
                    seq = int(record["seq"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    log.error("%s: a line that is not a record, skipped (run audit verify)", self.segment.path)
                    continue
                if seq < self.next_seq:
                    continue
                if seq > self.next_seq:
                    self.skipped += seq - self.next_seq
                    log.error("chain %s: records %d..%d are gone, shipping resumes at %d",
                              self.chain, self.next_seq, seq - 1, seq)
                self.next_seq = seq + 1
                last = seq
                if record.get("kind") in kinds:
                    out.append((seq, record))
                continue
            if line and self._fh is not None:
                self._fh.seek(pos)  # a line being written: read it whole next time
            newer = self._newer()
            if newer is None:
                break
            if line:
                log.error("%s ends with a line cut short; continuing with %s", self.segment.path, newer.name)
            self._open(newer)
        return Read(out, last)

    def _start(self) -> bool:
        """Open the segment holding next_seq (the latest that starts at or before it)."""
        found = self._segments()
        if not found:
            return False
        before = [s for s in found if s.first_seq <= self.next_seq]
        self._open(max(before, key=lambda s: s.first_seq) if before else min(found, key=lambda s: s.first_seq))
        return True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lines is not None:
            close = getattr(self._lines, "close", None)
            if close is not None:
                close()
            self._lines = None
