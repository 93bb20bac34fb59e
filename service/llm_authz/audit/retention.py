"""Retention: removing a chain's oldest closed segments so that what stays still verifies alone.

Before a segment is removed, a line is appended to `pruned.jsonl` (and fsynced) naming it, its seq
range and the whole signed checkpoint that closed it (docs/audit.md "Layout", Pruning). The next
segment's first record names that checkpoint's hash as its `prev_hash`, so `audit verify` anchors
the remainder on the manifest: ranges from seq 1 without a gap, a checkpoint whose hash and
signature verify. With a signing key, each manifest line is signed too (`key_id`, `signature`
over `PRUNED_DOMAIN` + the line's canonical JSON without them): a pruning the service did not do
is told from one it did.

Only the oldest closed segments of a chain go, in order (never the open one, never a gap), and
never one a shipper has not delivered: every `cursors/<name>.json` holds back its chain up to its
`seq`. An unreadable cursor holds back everything. Revisions are never removed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz.audit import chain as chainfmt
from llm_authz.audit import segments
from llm_authz.audit.compress import fsync_dir
from llm_authz.audit.keys import key_id, raw_public
from llm_authz.errors import AuditFormatError, LlmAuthzError

PRUNED_FILE = "pruned.jsonl"
CURSORS_DIR = "cursors"
PRUNED_DOMAIN = b"llm-authz/audit/pruned/v1\n"
ENTRY_FIELDS = ("chain", "segment", "first_seq", "last_seq", "last_hash", "checkpoint", "pruned_at", "reason")
log = logging.getLogger("llm_authz.audit")


class RetentionError(LlmAuthzError):
    """A segment could not be pruned safely (its closing checkpoint is missing or unreadable)."""


@dataclass(frozen=True)
class Policy:
    """How much to keep: segments older than `days`, and beyond `max_bytes` in all, go (None: no limit)."""

    days: float | None = None
    max_bytes: int | None = None

    @property
    def active(self) -> bool:
        return self.days is not None or self.max_bytes is not None


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- the manifest --------------------------------------------------------------------------------

def read_pruned(directory: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, entry) of every line of pruned.jsonl; [] when there is none.

    Raises AuditFormatError for a line that is not a JSON object with the manifest's fields.
    """
    path = Path(directory) / PRUNED_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise AuditFormatError(str(path), 0, f"cannot read: {exc.strerror}") from None
    out = []
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            raise AuditFormatError(str(path), number, "incomplete last line (a write cut short)")
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise AuditFormatError(str(path), number, f"not JSON: {exc}") from None
        if not isinstance(entry, dict) or any(f not in entry for f in ENTRY_FIELDS):
            raise AuditFormatError(str(path), number, f"not a pruned-segment entry (needs {', '.join(ENTRY_FIELDS)})")
        out.append((number, entry))
    return out


def signed_entry_message(entry: dict[str, Any]) -> bytes:
    """The bytes a manifest line's signature is made over."""
    return PRUNED_DOMAIN + chainfmt.canonical_json({k: v for k, v in entry.items() if k != "signature"})


def append_pruned(directory: Path, entry: dict[str, Any]) -> None:
    """Append one line to pruned.jsonl and fsync it (locked: writers of several chains share it)."""
    path = Path(directory) / PRUNED_FILE
    line = orjson.dumps(entry) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
    fsync_dir(Path(directory))


# ---- cursors -------------------------------------------------------------------------------------

def cursor_limits(directory: Path) -> dict[str, int] | None:
    """For each chain, the highest seq every shipper has delivered (a chain a cursor does not name is
    held back entirely by it). {} with no cursor; None when a cursor cannot be read: prune nothing."""
    folder = Path(directory) / CURSORS_DIR
    if not folder.is_dir():
        return {}
    limits: dict[str, int] | None = {}
    named: list[dict[str, int]] = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
            chains = doc["chains"]
            named.append({str(c): int(v["seq"]) for c, v in chains.items()})
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            log.error("cursor %s cannot be read: nothing is pruned until it can (or is removed)", path)
            return None
    if not named:
        return limits
    chains = set().union(*named)
    return {c: min(n.get(c, 0) for n in named) for c in chains} | {"*": 0}


def hold(directory: Path, name: str) -> bool:
    """Make sure a shipper that has not delivered anything yet already holds back pruning: create
    `cursors/<name>.json` naming no chain (which holds every chain) unless it exists. Atomic and
    safe when several processes do it at once. True when it was created."""
    folder = Path(directory) / CURSORS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.json"
    if target.exists():
        return False
    tmp = folder / f".{name}.json.{os.getpid()}.tmp"
    with tmp.open("wb") as fh:
        fh.write(orjson.dumps({"name": name, "chains": {}, "updated": utc_now()}))
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, target)  # fails if it exists: never replaces a shipper's real position
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    return created


def delivered_up_to(limits: dict[str, int], chain: str) -> int | None:
    """The seq up to which `chain` may be pruned as far as shippers go (None: no shipper)."""
    if not limits:
        return None
    return limits.get(chain, limits.get("*", 0))


# ---- choosing and pruning ------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    segment: segments.Segment
    last_seq: int
    reason: str  # "age" | "size"


def _size(seg: segments.Segment) -> int:
    try:
        return seg.path.stat().st_size
    except OSError:
        return 0


def _mtime(seg: segments.Segment) -> float:
    try:
        return seg.path.stat().st_mtime
    except OSError:
        return 0.0


def plan(directory: Path, chain: str, policy: Policy, now: float | None = None,
         all_segments: list[segments.Segment] | None = None) -> list[Candidate]:
    """The segments of `chain` to prune now, oldest first.

    A segment's age is its file's modification time (when it closed; compression keeps it). For
    the size limit the whole directory counts (every chain): each chain's writer removes its own
    part of the oldest closed segments until the total fits, so the chains shrink together.
    """
    if not policy.active:
        return []
    now = time.time() if now is None else now
    found = list_segments_all(directory) if all_segments is None else all_segments
    by_chain: dict[str, list[segments.Segment]] = {}
    for seg in found:
        by_chain.setdefault(seg.chain, []).append(seg)
    closed: list[tuple[segments.Segment, int]] = []  # (segment, last seq) of every chain
    for segs in by_chain.values():
        segs.sort(key=lambda s: s.first_seq)
        closed.extend((s, nxt.first_seq - 1) for s, nxt in zip(segs, segs[1:]))
    reasons: dict[str, str] = {}
    if policy.days is not None:
        cutoff = now - policy.days * 86400
        for seg, _ in closed:
            if _mtime(seg) < cutoff:
                reasons[seg.path.name] = "age"
    if policy.max_bytes is not None:
        total = sum(_size(s) for s in found) - sum(_size(s) for s, _ in closed if s.path.name in reasons)
        for seg, _ in sorted(closed, key=lambda c: (_mtime(c[0]), c[0].first_seq)):
            if total <= policy.max_bytes:
                break
            if seg.path.name not in reasons:
                reasons[seg.path.name] = "size"
                total -= _size(seg)
    limits = cursor_limits(directory)
    if limits is None:
        return []
    delivered = delivered_up_to(limits, chain)
    out = []
    for seg, last_seq in sorted(((s, n) for s, n in closed if s.chain == chain), key=lambda c: c[0].first_seq):
        reason = reasons.get(seg.path.name)
        if reason is None or (delivered is not None and last_seq > delivered):
            break  # only a prefix of the chain goes: no gap
        out.append(Candidate(seg, last_seq, reason))
    return out


def list_segments_all(directory: Path) -> list[segments.Segment]:
    return segments.list_segments(directory)


def closing_checkpoint(seg: segments.Segment, last_seq: int) -> dict[str, Any]:
    """The checkpoint record that closed the segment (its last line), checked against its hash."""
    line = segments.last_line(seg.path)
    if line is None or not chainfmt.line_hash_ok(line):
        raise RetentionError(f"{seg.path.name}: its last line is not a whole record: not pruned")
    record = orjson.loads(line)
    if record.get("kind") != chainfmt.CHECKPOINT or record.get("seq") != last_seq:
        raise RetentionError(f"{seg.path.name}: does not end with the checkpoint at seq {last_seq}: not pruned")
    return record


def prune(directory: Path, candidate: Candidate, signing_key: Ed25519PrivateKey | None = None,
          already: Iterable[tuple[str, str]] = ()) -> dict[str, Any] | None:
    """Record the segment in pruned.jsonl (unless `already` has it: a crash came before the
    removal), then remove its file(s). Returns the entry written, or None when it was already there."""
    seg = candidate.segment
    entry = None
    if (seg.chain, seg.name) not in set(already):
        checkpoint = closing_checkpoint(seg, candidate.last_seq)
        entry = {"chain": seg.chain, "segment": seg.name, "first_seq": seg.first_seq,
                 "last_seq": candidate.last_seq, "last_hash": checkpoint["hash"], "checkpoint": checkpoint,
                 "pruned_at": utc_now(), "reason": candidate.reason}
        if signing_key is not None:
            entry["key_id"] = key_id(signing_key.public_key())
            entry["public_key"] = chainfmt.b64(raw_public(signing_key.public_key()))
            entry["signature"] = chainfmt.b64(signing_key.sign(signed_entry_message(entry)))
        append_pruned(directory, entry)
    for codec in (None, *segments.CODECS):
        path = Path(directory) / (seg.name + (segments.CODECS[codec] if codec else ""))
        path.unlink(missing_ok=True)
    fsync_dir(Path(directory))
    return entry


def oldest_kept_time(directory: Path) -> float | None:
    """When the oldest record still in the directory was written (epoch seconds), or None."""
    oldest = None
    firsts: dict[str, segments.Segment] = {}
    for seg in segments.list_segments(directory):
        if seg.chain not in firsts:
            firsts[seg.chain] = seg
    for seg in firsts.values():
        try:
            for line in segments.iter_lines(seg.path):
                when = _epoch(orjson.loads(line).get("time"))
                if when is not None and (oldest is None or when < oldest):
                    oldest = when
                break
        except (OSError, orjson.JSONDecodeError, ValueError, AttributeError):
            continue
    return oldest


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
