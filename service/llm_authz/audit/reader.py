"""Reading an audit log in order, one record at a time (constant memory, however long the log).

    from llm_authz.audit import reader

    for rec in reader.iter_records(["audit/"]):          # decision records, merged by time
        doc = reader.load_revision("audit/", rec["policy"]["revision"])
        ...

PATH arguments are audit directories (every chain in them, each chain's segment files in seq
order) or segment files (grouped by the chain their names say, in the order given). A log with
one chain is read in seq order; with several (`serve --processes N`), the chains' records are
merged by `time`, each chain's own order kept. Segments may be plain or compressed: they are
found and opened in audit/segments.py, streaming. Reading does not verify: run
`audit.verify.verify` first when it matters.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson

from llm_authz.audit import chain, segments
from llm_authz.errors import AuditFormatError

PathLike = str | Path


@dataclass(frozen=True, slots=True)
class Entry:
    """One record and where it is: its chain, its file and 1-based line number."""

    file: Path
    line: int
    record: dict[str, Any]
    chain: str = chain.MAIN_CHAIN


@dataclass(frozen=True)
class Chain:
    """One hash chain of a log: its name and its segment files in seq order."""

    name: str
    files: list[Path]


def chains(paths: Iterable[PathLike]) -> list[Chain]:
    """The chains at `paths`: main first, then w1, w2, ...

    A directory gives every chain in it, each chain's segments in seq order. Files are grouped by
    the chain their names say (a file whose name is not a segment name counts as main), each group
    in the order given. Raises AuditFormatError (line 0) for a path that does not exist or a
    directory with no segment.
    """
    grouped: dict[str, list[Path]] = {}
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = segments.list_segments(path)
            if not found:
                raise AuditFormatError(str(path), 0, "no audit segment files (decisions-*.jsonl) here")
            for seg in found:
                grouped.setdefault(seg.chain, []).append(seg.path)
        elif path.is_file():
            grouped.setdefault(chain.chain_of(segments.plain_name(path.name)) or chain.MAIN_CHAIN, []).append(path)
        else:
            raise AuditFormatError(str(path), 0, "no such file or directory")
    return [Chain(name, grouped[name]) for name in sorted(grouped, key=chain.chain_order)]


def segment_files(paths: Iterable[PathLike]) -> list[Path]:
    """Every segment file at `paths`, chain by chain (see `chains`), each chain in seq order."""
    return [file for c in chains(paths) for file in c.files]


def audit_dir(paths: Iterable[PathLike]) -> Path | None:
    """The directory holding revisions/ for these paths: the first directory given, or the files' parent."""
    for item in paths:
        path = Path(item)
        return path if path.is_dir() else path.parent
    return None


def iter_entries(paths: Iterable[PathLike], kinds: Iterable[str] | None = None,
                 skip_partial_tail: bool = False) -> Iterator[Entry]:
    """Every record (or those of `kinds`) with its location, in log order (chains merged by time).

    A line that is not JSON raises AuditFormatError naming file and line. A chain's last line with
    no newline (a write cut short, or being written now) raises too, unless skip_partial_tail.
    """
    wanted = frozenset(kinds) if kinds is not None else None
    found = chains(paths)
    streams = [_chain_entries(c, wanted, skip_partial_tail) for c in found]
    if len(streams) == 1:
        yield from streams[0]
    else:
        yield from heapq.merge(*streams, key=_entry_time)


def _entry_time(entry: Entry) -> str:
    # Times are written as %Y-%m-%dT%H:%M:%S.%fZ (UTC, fixed width): string order is time order.
    when = entry.record.get("time")
    return when if isinstance(when, str) else ""


class _Time(msgspec.Struct):
    time: str = ""


_decode_time = msgspec.json.Decoder(_Time).decode


def line_time(line: bytes) -> str:
    """A record line's `time`, for merging chains without parsing whole records ("" if unreadable)."""
    try:
        return _decode_time(line).time
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def merge_lines(streams: list[Iterator[bytes]]) -> Iterator[bytes]:
    """Raw record lines of several chains merged by time (one stream passes through untouched)."""
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=line_time)


def _chain_entries(found: Chain, wanted: frozenset[str] | None, skip_partial_tail: bool) -> Iterator[Entry]:
    files = found.files
    for index, path in enumerate(files):
        for number, line in enumerate(segments.iter_lines(path), 1):
            if not line.endswith(b"\n"):
                if skip_partial_tail and index == len(files) - 1:
                    return
                raise AuditFormatError(str(path), number, "incomplete last line (a write cut short)")
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise AuditFormatError(str(path), number, f"not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise AuditFormatError(str(path), number, "not a JSON object")
            if wanted is None or record.get("kind") in wanted:
                yield Entry(path, number, record, found.name)


def iter_records(paths: Iterable[PathLike], kinds: Iterable[str] | None = (chain.DECISION,),
                 skip_partial_tail: bool = False) -> Iterator[dict[str, Any]]:
    """The records themselves: decision records by default, `kinds=None` for all of them."""
    for entry in iter_entries(paths, kinds, skip_partial_tail):
        yield entry.record


def load_revision(directory: PathLike, revision: str) -> dict[str, Any]:
    """The archived policy-and-data document of a revision, checked against its hash.

    Pass it to `policy.PolicySource.from_document` to evaluate exactly what decided.
    """
    if len(revision) != 64 or any(c not in "0123456789abcdef" for c in revision):
        raise AuditFormatError(str(directory), 0, f"{revision[:80]!r} is not a revision hash")
    path = Path(directory) / chain.REVISIONS_DIR / f"{revision}.json"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditFormatError(str(path), 0, f"revision not archived: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != revision:
        raise AuditFormatError(str(path), 0, "the archived revision does not match its hash")
    return orjson.loads(data)
