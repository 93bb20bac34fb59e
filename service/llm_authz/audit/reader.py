"""Reading an audit log in order, one record at a time (constant memory, however long the log).

    from llm_authz.audit import reader

    for rec in reader.iter_records(["audit/"]):          # decision records, seq order
        doc = reader.load_revision("audit/", rec["policy"]["revision"])
        ...

PATH arguments are audit directories (their segment files, in seq order) or segment files (taken
in the order given). Reading does not verify: run `audit.verify.verify` first when it matters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llm_authz.audit import chain
from llm_authz.errors import AuditFormatError

PathLike = str | Path


@dataclass(frozen=True, slots=True)
class Entry:
    """One record and where it is: its file and 1-based line number."""

    file: Path
    line: int
    record: dict[str, Any]


def segment_files(paths: Iterable[PathLike]) -> list[Path]:
    """Directories expand to their segment files in name (= seq) order; files are kept as given.

    Raises AuditFormatError (line 0) for a path that does not exist or a directory with no segment.
    """
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if chain.is_segment_name(p.name) and p.is_file())
            if not found:
                raise AuditFormatError(str(path), 0, "no audit segment files (decisions-*.jsonl) here")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise AuditFormatError(str(path), 0, "no such file or directory")
    return files


def audit_dir(paths: Iterable[PathLike]) -> Path | None:
    """The directory holding revisions/ for these paths: the first directory given, or the files' parent."""
    for item in paths:
        path = Path(item)
        return path if path.is_dir() else path.parent
    return None


def iter_entries(paths: Iterable[PathLike], kinds: Iterable[str] | None = None,
                 skip_partial_tail: bool = False) -> Iterator[Entry]:
    """Every record (or those of `kinds`) with its location, in log order.

    A line that is not JSON raises AuditFormatError naming file and line. A last line with no
    newline (a write cut short, or being written now) raises too, unless skip_partial_tail.
    """
    wanted = frozenset(kinds) if kinds is not None else None
    files = segment_files(paths)
    for index, path in enumerate(files):
        with path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
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
                    yield Entry(path, number, record)


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
