"""A shipper's position in the audit log: `cursors/<name>.json` (docs/audit.md, "Layout").

    {"name": "decision-log", "chains": {"main": {"seq": 1234, "segment": "decisions-...jsonl"}},
     "updated": "2026-12-02T07:00:00.000000Z"}

means every record of chain `main` up to seq 1234 is delivered. The file is replaced atomically
(write `<name>.json.tmp`, fsync, rename, fsync the directory), so a crash leaves the old cursor or
the new one, never half of one; delivery is at least once, never less. Retention never prunes
past a cursor.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson

from llm_authz.errors import LlmAuthzError

CURSORS_DIR = "cursors"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class CursorError(LlmAuthzError):
    """A cursor file exists but cannot be read: shipping does not start rather than resend or skip."""


@dataclass(frozen=True)
class Position:
    seq: int
    segment: str


class Cursor:
    def __init__(self, audit_dir: Path, name: str):
        if not _NAME.match(name):
            raise CursorError(f"cursor name {name!r}: lower-case letters, digits, '-' or '_'")
        self.name = name
        self.directory = Path(audit_dir) / CURSORS_DIR
        self.path = self.directory / f"{name}.json"

    def load(self) -> dict[str, Position]:
        """Delivered positions by chain; {} when nothing was ever delivered."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CursorError(f"{self.path}: {exc.strerror}") from None
        try:
            doc = orjson.loads(raw)
            return {str(chain): Position(int(pos["seq"]), str(pos.get("segment", "")))
                    for chain, pos in doc["chains"].items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CursorError(f"{self.path}: not a cursor ({exc}); move it aside to ship from the start") from None

    def save(self, positions: dict[str, Position]) -> None:
        doc = {"name": self.name,
               "chains": {c: {"seq": p.seq, "segment": p.segment} for c, p in sorted(positions.items())},
               "updated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(doc))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
