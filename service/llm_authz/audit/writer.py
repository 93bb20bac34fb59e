"""Append-only, hash-chained decision log. A record is written and fsynced before the check answers."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from llm_authz.errors import AuditWriteError
from llm_authz.policy import PolicySource, canonical_json

GENESIS = "0" * 64


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


class AuditLog:
    def __init__(self, directory: Path, durability: str = "fsync"):
        self.directory = directory
        self.durability = durability
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "revisions").mkdir(exist_ok=True)
            self._path = directory / "decisions.log"
            self._seq, self._prev = self._tail()
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit log in {directory}: {exc}") from exc

    def _tail(self) -> tuple[int, str]:
        if not self._path.exists():
            return 0, GENESIS
        last = None
        with self._path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    last = line
        if last is None:
            return 0, GENESIS
        rec = orjson.loads(last)
        return rec["seq"], rec["hash"]

    def archive_revision(self, source: PolicySource) -> None:
        path = self.directory / "revisions" / f"{source.revision}.json"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(canonical_json(source.document))
            os.replace(tmp, path)

    def append(self, record: dict[str, Any]) -> None:
        with self._lock:
            record["seq"] = self._seq + 1
            record["prev_hash"] = self._prev
            record["hash"] = record_hash(record)
            line = orjson.dumps(record) + b"\n"
            try:
                os.write(self._fd, line)
                if self.durability == "fsync":
                    os.fsync(self._fd)
            except OSError as exc:
                raise AuditWriteError(f"audit write failed: {exc.strerror}") from exc
            self._seq, self._prev = record["seq"], record["hash"]

    def close(self) -> None:
        os.close(self._fd)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
