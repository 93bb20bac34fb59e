"""Verifying an audit log: every hash, every link, every sequence number, every checkpoint signature.

    from llm_authz.audit.verify import verify
    report = verify(["audit/"], public_keys=[key])      # streams: constant memory
    if not report.ok:
        print(report.problem)                            # file:line: seq N: what is wrong

A directory may hold several chains (`serve --processes N`, docs/audit.md "Layout"): each is
verified on its own (its own seq from 1, genesis, checkpoints), and the report adds them up, with
one entry per chain in `chains`. Verification stops at the first problem: after it, nothing in
the log can be trusted anyway.
With `public_keys`, every checkpoint must be signed by one of them; without, signatures are
checked against the key each checkpoint names (this catches corruption, not a forger who signs
with a key of their own: auditors pin the key).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from llm_authz.audit import chain, segments
from llm_authz.audit.keys import key_id, raw_public
from llm_authz.audit.reader import PathLike, chains
from llm_authz.errors import AuditFormatError


@dataclass(frozen=True)
class Problem:
    """The first thing found wrong: where (file, 1-based line, seq when known) and what."""

    file: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {f'seq {self.seq}: ' if self.seq is not None else ''}{self.message}"


@dataclass
class Report:
    files: list[str] = field(default_factory=list)
    records: int = 0
    decisions: int = 0
    checkpoints: int = 0
    signed_checkpoints: int = 0
    recoveries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_checkpoint_seq: int | None = None
    unsigned_tail: int = 0  # records after the last signed checkpoint
    key_ids: list[str] = field(default_factory=list)
    key_pinned: bool = False
    revisions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problem: Problem | None = None
    # One entry per chain: name, files, records, decisions, first_seq, last_seq, last_checkpoint_seq.
    chains: list[dict[str, Any]] = field(default_factory=list)
    # Segments removed by retention that the kept log is anchored on (pruned.jsonl), oldest first:
    # chain, segment, first_seq, last_seq, pruned_at, reason.
    pruned: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "problem"}
        out["ok"] = self.ok
        out["problem"] = None if self.problem is None else {**self.problem.__dict__, "text": str(self.problem)}
        return out


class _Policy(msgspec.Struct):
    revision: str | None = None


class _Chain(msgspec.Struct):
    """The fields verification reads; msgspec skips the rest without building it (the speed of verify)."""

    seq: int
    prev_hash: str
    hash: str
    kind: str | None = None
    policy: _Policy | None = None
    revision: str | None = None
    chain: str | None = None  # segment records of a chain other than main


_decode_chain = msgspec.json.Decoder(_Chain).decode


class _Stop(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


class _SpanStop(Exception):
    pass


SPAN_BYTES = 16 * 1024 * 1024  # how much of a segment one worker checks at a time


@dataclass(frozen=True)
class _Task:
    """One byte range of one segment file, starting at a line start."""

    path: str
    start: int
    end: int
    first_of_file: bool
    last_of_file: bool
    pinned: dict[bytes, str]
    chain: str | None = None  # the chain the file's name says it belongs to (None: not a segment name)


@dataclass
class _Span:
    """What the check of one _Task found. Links inside it are checked; its first record's link is not."""

    lines: int = 0
    first_seq: int | None = None
    first_prev: str | None = None
    first_hash: str | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    last_kind: str | None = None
    records: int = 0
    decisions: int = 0
    checkpoints: int = 0
    signed: int = 0
    recoveries: int = 0
    unsigned_tail: int = 0  # records after the span's last signed checkpoint (all of them when none)
    last_signed_seq: int | None = None
    key_ids: dict[str, None] = field(default_factory=dict)
    revisions: dict[str, tuple[int, int]] = field(default_factory=dict)  # revision -> (line, seq)
    # (line in the span, seq, message, found before the record's link was checked)
    problem: tuple[int, int | None, str, bool] | None = None


def verify(paths: Iterable[PathLike], public_keys: Sequence[Ed25519PublicKey] = (),
           check_revisions: bool = True, workers: int = 1) -> Report:
    """Check the log at `paths` (directories or segment files). Never raises for a bad log.

    A directory must hold the whole log (its first record is seq 1); given files may start
    anywhere, and the first record given is trusted as the anchor. With check_revisions, each
    revision the records name must be archived under <directory>/revisions/ and match its hash.
    workers > 1 checks ranges of the segments in that many forked processes (for the command
    line; leave it at 1 in a process that runs threads) and gives the same report.
    """
    paths = list(paths)
    report = Report(key_pinned=bool(public_keys))
    try:
        found = chains(paths)
    except AuditFormatError as exc:
        report.problem = Problem(exc.file, exc.line, None, exc.message)
        return report
    report.files = [str(f) for c in found for f in c.files]
    from_directory = any(Path(p).is_dir() for p in paths)
    pinned = {raw_public(k): key_id(k) for k in public_keys}
    sites: dict[str, tuple[str, int, int]] = {}
    spans = None
    try:
        manifest = _manifest(paths) if from_directory else None
        plan = [(c, _tasks(c.files, pinned, SPAN_BYTES if workers > 1 else None)) for c in found]
        spans = _run([t for _, tasks in plan for t in tasks], workers)
        for found_chain, tasks in plan:
            part = Report(key_pinned=report.key_pinned, files=[str(f) for f in found_chain.files])
            try:
                start = _Start(found_chain.name, manifest, pinned, report) if from_directory else None
                for revision, site in _stitch(tasks, spans, found_chain.files, part, bool(pinned),
                                              start).items():
                    sites.setdefault(revision, site)
            finally:
                _add_chain(report, part, found_chain.name, len(found) > 1)
        if from_directory:
            _check_archive_sums(paths)
        if check_revisions:
            _check_revisions(paths, report, sites)
    except _Stop as stop:
        report.problem = stop.problem
    finally:
        if spans is not None:
            spans.close()
    return report


def _add_chain(report: Report, part: Report, name: str, several: bool) -> None:
    """Add one chain's counts to the whole log's report."""
    report.chains.append({"name": name, "files": part.files, "records": part.records, "decisions": part.decisions,
                          "first_seq": part.first_seq, "last_seq": part.last_seq,
                          "last_checkpoint_seq": part.last_checkpoint_seq, "unsigned_tail": part.unsigned_tail})
    for attr in ("records", "decisions", "checkpoints", "signed_checkpoints", "recoveries", "unsigned_tail"):
        setattr(report, attr, getattr(report, attr) + getattr(part, attr))
    if len(report.chains) == 1:
        report.first_seq, report.last_seq = part.first_seq, part.last_seq
        report.last_checkpoint_seq = part.last_checkpoint_seq
    report.key_ids.extend(k for k in part.key_ids if k not in report.key_ids)
    report.revisions.extend(r for r in part.revisions if r not in report.revisions)
    report.warnings.extend(f"chain {name}: {w}" if several else w for w in part.warnings)


def _tasks(files: list[Path], pinned: dict[bytes, str], span_bytes: int | None) -> list[_Task]:
    tasks = []
    for path in files:
        path = segments.current_path(path)  # compressed since it was listed: read the compressed copy
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise _Stop(Problem(str(path), 0, None, f"cannot read: {exc.strerror}")) from None
        seg = segments.segment_of(path)
        chain_name = seg.chain if seg is not None else None
        if seg is not None and seg.compressed:
            # A compressed segment streams through its decompressor whole: one task per segment.
            tasks.append(_Task(str(path), 0, -1, True, True, pinned, chain_name))
            continue
        cuts = [0]
        if span_bytes and size > span_bytes:
            with path.open("rb") as fh:
                while cuts[-1] + span_bytes < size:
                    fh.seek(cuts[-1] + span_bytes)
                    rest = fh.read(1 << 20)
                    newline = rest.find(b"\n")
                    if newline < 0 or fh.tell() - len(rest) + newline + 1 >= size:
                        break
                    cuts.append(fh.tell() - len(rest) + newline + 1)
        cuts.append(size)
        for i in range(len(cuts) - 1):
            tasks.append(_Task(str(path), cuts[i], cuts[i + 1], i == 0, i == len(cuts) - 2, pinned, chain_name))
    return tasks


def _run(tasks: list[_Task], workers: int) -> Generator[_Span, None, None]:
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_scan, tasks)
        return
    import multiprocessing

    # Not "fork": the caller may have threads (boto3's transfers, a server), and a child forked
    # while one of them held a lock can wait on it forever, hanging the whole verify.
    with multiprocessing.get_context("forkserver").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(_scan, tasks)


def _stitch(tasks: list[_Task], spans: Iterable[_Span], files: list[Path], report: Report, pinned: bool,
            start: "_Start | None") -> dict[str, tuple[str, int, int]]:
    """Join the spans in log order: the links between them, the counts, the first problem."""
    revisions: dict[str, tuple[str, int, int]] = {}
    key_ids: dict[str, None] = {}
    prev_seq: int | None = None
    prev_hash: str | None = None
    last_kind: str | None = None
    prev_file = ""
    base = 0  # lines of the file before this span
    last_file = str(files[-1])
    for task, span in zip(tasks, spans):
        name = task.path
        if task.first_of_file:
            base = 0
        problem = span.problem
        report.records += span.records
        report.decisions += span.decisions
        if problem is not None and problem[0] == 1 and problem[3]:
            raise _Stop(Problem(name, base + 1, problem[1], problem[2]))
        seq = span.first_seq
        if seq is not None:
            if prev_hash is None:
                report.first_seq = seq
                if start is not None:
                    start.check(name, base + 1, seq, span.first_prev or "")
            else:
                _check_link(name, base + 1, seq, span.first_prev, prev_seq, prev_hash,
                            prev_file if task.first_of_file else None, span.first_hash == prev_hash)
        if problem is not None:
            raise _Stop(Problem(name, base + problem[0], problem[1], problem[2]))
        if task.first_of_file and task.last_of_file and span.lines == 0:
            raise _Stop(Problem(name, 0, None, "an empty segment file"))
        report.checkpoints += span.checkpoints
        report.signed_checkpoints += span.signed
        report.recoveries += span.recoveries
        if span.last_signed_seq is not None:
            report.unsigned_tail = span.unsigned_tail
            report.last_checkpoint_seq = span.last_signed_seq
        else:
            report.unsigned_tail += span.unsigned_tail
        key_ids.update(span.key_ids)
        for revision, (line, rseq) in span.revisions.items():
            revisions.setdefault(revision, (name, base + line, rseq))
        if span.last_seq is not None:
            prev_seq, prev_hash, last_kind = span.last_seq, span.last_hash, span.last_kind
            report.last_seq = prev_seq
        base += span.lines
        if task.last_of_file:
            if name != last_file and last_kind != chain.CHECKPOINT:
                raise _Stop(Problem(name, base, prev_seq, "the segment does not end with its rotation "
                                    "checkpoint: records were removed from its end"))
            prev_file = Path(name).name
    report.key_ids = list(key_ids)
    report.revisions = list(revisions)
    if pinned and report.records and not report.signed_checkpoints:
        raise _Stop(Problem(last_file, 0, None, "no checkpoint signed by the given key"))
    if report.records and last_kind != chain.CHECKPOINT:
        report.warnings.append(
            f"the last {report.unsigned_tail} record(s) (up to seq {report.last_seq}) are not yet covered by a "
            "signed checkpoint: llm-authz is running, or stopped without shutting down (or the log's end was cut)")
    elif report.unsigned_tail:
        report.warnings.append(f"{report.unsigned_tail} record(s) at the end are covered only by unsigned "
                               "checkpoints")
    return revisions


def _check_archive_sums(paths: list[PathLike]) -> None:
    """An archive (audit/archive.py) lists its files with their SHA-256: each must be there, unchanged."""
    from llm_authz.audit.archive import SUMS_FILE, check_sums

    directory = next(Path(p) for p in paths if Path(p).is_dir())
    found = check_sums(directory)
    if found is not None:
        raise _Stop(Problem(str(directory / SUMS_FILE), found[0], None, found[1]))


def _manifest(paths: list[PathLike]) -> tuple[Path, list[tuple[int, dict[str, Any]]]] | None:
    """pruned.jsonl of the directory given: (its path, its entries); None when there is none."""
    from llm_authz.audit.retention import PRUNED_FILE, read_pruned

    directory = next(Path(p) for p in paths if Path(p).is_dir())
    try:
        entries = read_pruned(directory)
    except AuditFormatError as exc:
        raise _Stop(Problem(exc.file, exc.line, None, exc.message)) from None
    return (directory / PRUNED_FILE, entries) if entries else None


class _Start:
    """Where a chain of a whole directory must start: at seq 1 from the genesis hash, or, when
    retention removed its oldest segments, right after them, anchored by the signed checkpoint
    that closed the last one (pruned.jsonl: ranges from seq 1 without a gap)."""

    def __init__(self, chain_name: str, manifest: tuple[Path, list[tuple[int, dict[str, Any]]]] | None,
                 pinned: dict[bytes, str], report: Report):
        self.chain = chain_name
        self.path = str(manifest[0]) if manifest else ""
        self.entries = [(n, e) for n, e in (manifest[1] if manifest else []) if e.get("chain") == chain_name]
        self.pinned = pinned
        self.report = report

    def check(self, name: str, line: int, seq: int, prev_hash: str) -> None:
        if seq == 1 and prev_hash == chain.GENESIS:
            return
        before = sorted(((n, e) for n, e in self.entries if _int(e.get("last_seq")) < seq),
                        key=lambda item: _int(item[1].get("first_seq")))
        if not before:
            raise _Stop(Problem(name, line, seq, "the log does not start at seq 1 from the genesis hash: its first "
                                "records or segment files were removed" + (" (pruned.jsonl does not account for them)"
                                                                         if self.path else "")))
        expected, last = 1, None
        keys: dict[bytes, Ed25519PublicKey] = {}
        key_ids: dict[str, None] = {}
        for number, entry in before:
            what = self._entry_problem(entry, expected, keys, key_ids)
            if what:
                raise _Stop(Problem(self.path, number, None, f"chain {self.chain}: {what}"))
            expected, last = entry["last_seq"] + 1, entry
        assert last is not None
        if seq != expected:
            raise _Stop(Problem(name, line, seq, f"the kept log starts at seq {seq} but pruned.jsonl accounts for "
                                f"seq 1..{expected - 1} only: seq {expected}..{seq - 1} were removed without a trace"))
        if prev_hash != last["last_hash"]:
            raise _Stop(Problem(name, line, seq, f"this segment does not continue the pruned {last['segment']}: its "
                                "prev_hash is not the hash of the checkpoint that closed it (the manifest or the "
                                "segment was replaced)"))
        self.report.pruned.extend({k: e.get(k) for k in ("chain", "segment", "first_seq", "last_seq", "pruned_at",
                                                          "reason")} for _, e in before)
        self.report.key_ids.extend(k for k in key_ids if k not in self.report.key_ids)

    def _entry_problem(self, entry: dict[str, Any], expected: int, keys: dict[bytes, Ed25519PublicKey],
                       key_ids: dict[str, None]) -> str | None:
        from llm_authz.audit.retention import signed_entry_message

        segment, first, last, cp = entry.get("segment"), entry.get("first_seq"), entry.get("last_seq"), entry.get(
            "checkpoint")
        if type(first) is not int or type(last) is not int or not isinstance(segment, str) or not isinstance(cp, dict):
            return "a pruned-segment entry with fields of the wrong type"
        if first != expected:
            return (f"pruned segment {segment} starts at seq {first}, expected {expected}: "
                    + ("a manifest entry is missing (seq "
                       f"{expected}..{first - 1} unaccounted for)" if first > expected else "ranges overlap"))
        parsed = segments.parse_name(segment)
        if parsed is None or parsed[0] != self.chain or parsed[1] != first or parsed[2] is not None or last < first:
            return f"pruned segment {segment!r} does not match its chain or seq range"
        if cp.get("kind") != chain.CHECKPOINT or cp.get("seq") != last:
            return f"the record kept for pruned segment {segment} is not its closing checkpoint at seq {last}"
        if cp.get("hash") != chain.record_hash(cp) or entry.get("last_hash") != cp.get("hash"):
            return f"the closing checkpoint kept for pruned segment {segment} does not match its hash: it was edited"
        problem = _signature_problem(cp, self.pinned, keys, key_ids)
        if problem:
            return f"pruned segment {segment}: {problem}"
        signature = entry.get("signature")
        if signature is None:
            return (f"the entry for pruned segment {segment} is not signed: removed by someone other than llm-authz?"
                    if self.pinned else None)
        try:
            raw = chain.unb64(entry["public_key"])
            key = keys.get(raw) or Ed25519PublicKey.from_public_bytes(raw)
            key.verify(chain.unb64(signature), signed_entry_message(entry))
        except (KeyError, TypeError, ValueError, AttributeError):
            return f"the entry for pruned segment {segment} has a malformed key or signature"
        except InvalidSignature:
            return f"the entry for pruned segment {segment} does not match its signature: the manifest was edited"
        if self.pinned and raw not in self.pinned:
            return f"the entry for pruned segment {segment} is signed by key {key_id(key)}, not by the given key"
        return None


def _int(value: Any) -> int:
    return value if type(value) is int else 0


def _link_problem(seq: int, prev_hash: str, expected: int, prev: str, continues: str | None,
                  duplicate: bool) -> str | None:
    """What is wrong with a record's seq and prev_hash given the record before it, if anything."""
    if seq != expected:
        if seq > expected:
            return (f"expected seq {expected} here, found {seq}: {seq - expected} record(s) removed or moved"
                    f"{' (a segment file missing?)' if continues is not None else ''}")
        if duplicate:
            return f"a duplicate of the record before it (seq {seq} twice)"
        return f"seq {seq} comes after seq {expected - 1}: a record was duplicated, inserted or moved here"
    if prev_hash != prev:
        if continues is not None:
            return (f"this segment does not continue {continues}: its prev_hash is not the last hash of the "
                    "segment before (segments swapped, replaced or from another log)")
        return "prev_hash does not link to the record before it: a record was inserted, removed or replaced"
    return None


def _check_link(name: str, line: int, seq: int, prev_hash: str | None, prev_seq: int | None, prev: str,
                continues: str | None, duplicate: bool) -> None:
    what = _link_problem(seq, prev_hash or "", (prev_seq or 0) + 1, prev, continues, duplicate)
    if what:
        raise _Stop(Problem(name, line, seq, what))


def _scan(task: _Task) -> _Span:
    """Check one range: every line's hash, the links inside it, checkpoint signatures. Runs in a worker."""
    span = _Span()
    try:
        _scan_into(task, span)
    except _SpanStop:
        pass
    except AuditFormatError as exc:  # a compressed segment that does not decompress
        span.problem = (span.lines + 1, None, exc.message, True)
    return span


def _scan_into(task: _Task, span: _Span) -> None:
    sha256 = hashlib.sha256
    decode = _decode_chain
    suffix_len = chain.HASH_SUFFIX_LEN
    hash_key = b',"hash":"'
    decision, checkpoint, segment, recovery, revision_kind = (
        chain.DECISION, chain.CHECKPOINT, chain.SEGMENT, chain.RECOVERY, chain.REVISION)
    pinned = task.pinned
    keys: dict[bytes, Ed25519PublicKey] = {}
    revisions = span.revisions
    prev: str | None = None
    expected = 0
    records = decisions = unsigned = 0
    lineno = 0
    kind = None
    seq: int | None = None

    def stop(line: int, at_seq: int | None, message: str, before_link: bool) -> None:
        span.problem = (line, at_seq, message, before_link)
        raise _SpanStop

    try:
        for line in _lines(Path(task.path), task.start, task.end):
            lineno += 1
            tail = line[-suffix_len:].tobytes()
            if tail[-3:] != b'"}\n' or len(line) <= suffix_len or tail[:9] != hash_key:
                if tail[-1:] != b"\n":
                    stop(lineno, None, "incomplete last line: a write was cut short (restart llm-authz to move "
                         "it aside) or the file was cut", True)
                stop(lineno, None, "not an audit record line (no hash at its end)", True)
            digest = tail[9:73].decode("ascii", "replace")
            h = sha256(line[:-suffix_len])  # the body is the line up to the hash, then "}"
            h.update(b"}")
            if h.hexdigest() != digest:
                stop(lineno, _seq_of(line), "the record's hash does not match its content: the record was edited",
                     True)
            try:
                rec = decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                stop(lineno, None, f"not a valid audit record: {exc}", True)
            seq, prev_hash, kind = rec.seq, rec.prev_hash, rec.kind
            if rec.hash != digest:
                stop(lineno, seq, "not a valid audit record (two hash members)", True)
            if prev is None:
                span.first_seq, span.first_prev = seq, prev_hash
                span.first_hash = digest
            elif seq != expected or prev_hash != prev:
                stop(lineno, seq, _link_problem(seq, prev_hash, expected, prev, None, digest == prev) or "", False)
            first_in_file = lineno == 1 and task.first_of_file
            if first_in_file and kind != segment:
                stop(lineno, seq, "the file does not start with a segment header: its first records were removed",
                     False)
            if first_in_file and task.chain is not None and (rec.chain or chain.MAIN_CHAIN) != task.chain:
                stop(lineno, seq, f"the segment header names chain {rec.chain or chain.MAIN_CHAIN} but the file "
                     f"name says chain {task.chain}: a segment moved from one chain to another", False)
            if kind == decision:
                decisions += 1
                unsigned += 1
                revision = rec.policy.revision if rec.policy is not None else None
                if revision is not None and revision not in revisions:
                    revisions[revision] = (lineno, seq)
            elif kind == checkpoint:
                span.checkpoints += 1
                cp = orjson.loads(line)
                problem = _signature_problem(cp, pinned, keys, span.key_ids)
                if problem is not None:
                    stop(lineno, seq, problem, False)
                if cp.get("signature") is not None:
                    span.signed += 1
                    unsigned = 0
                    span.last_signed_seq = seq
                else:
                    unsigned += 1
            else:
                unsigned += 1
                if kind == segment and not first_in_file:
                    stop(lineno, seq, "a segment header in the middle of a file", False)
                if kind == recovery:
                    span.recoveries += 1
                elif kind == revision_kind and rec.revision is not None:
                    revisions.setdefault(rec.revision, (lineno, seq))
            records += 1
            prev = digest
            expected = seq + 1
    finally:
        span.lines = lineno
        span.records, span.decisions, span.unsigned_tail = records, decisions, unsigned
        if prev is not None:
            span.last_seq, span.last_hash, span.last_kind = expected - 1, prev, kind


def _lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
    """The lines of path[start:end], newline included, as views of a read-only mapping: no copy,
    constant heap. The last one lacks its newline when the range ends inside a line. A compressed
    segment (end -1: the whole of it) streams through its decompressor instead.
    """
    if end == -1:
        yield from segments.iter_line_views(path)
        return
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        # Compressed (plain file removed) after the tasks were made: the same bytes, decompressed.
        yield from _decompressed_range(segments.current_path(path), start, end)
        return
    with fh:
        size = os.fstat(fh.fileno()).st_size
        end = size if end is None else min(end, size)
        if end <= start:
            return
        mapped = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ)
    if hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_SEQUENTIAL)
    view = memoryview(mapped)
    find = mapped.find
    pos = start
    while pos < end:
        newline = find(b"\n", pos, end)
        if newline < 0:
            yield view[pos:end]
            return
        yield view[pos:newline + 1]
        pos = newline + 1
    # The mapping closes when the last view of it is gone.


def _decompressed_range(path: Path, start: int, end: int | None) -> Iterator[memoryview]:
    """The lines of bytes [start:end] of a compressed segment's content (a range of at most one
    task's span is held in memory)."""
    if not segments.segment_of(path) or not segments.segment_of(path).compressed:
        raise AuditFormatError(str(path), 0, "the segment file went away while it was being verified")
    offset = 0
    parts = []
    for chunk in segments.iter_chunks(path):
        lo, hi = max(start - offset, 0), len(chunk) if end is None else min(end - offset, len(chunk))
        if lo < hi:
            parts.append(chunk[lo:hi])
        offset += len(chunk)
        if end is not None and offset >= end:
            break
    data = b"".join(parts)
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        if newline < 0:
            yield view[pos:]
            return
        yield view[pos:newline + 1]
        pos = newline + 1


def _seq_of(line: bytes | memoryview) -> int | None:
    try:
        seq = orjson.loads(line).get("seq")
        return seq if type(seq) is int else None
    except (orjson.JSONDecodeError, AttributeError):
        return None


def _signature_problem(rec: dict[str, Any], pinned: dict[bytes, str], keys: dict[bytes, Ed25519PublicKey],
                       key_ids: dict[str, None]) -> str | None:
    """What is wrong with a checkpoint's signature, if anything. A good one adds its key id to key_ids."""
    signature = rec.get("signature")
    if signature is None:
        return "the checkpoint has no signature" if pinned else None
    try:
        raw = chain.unb64(rec["public_key"])
        sig = chain.unb64(signature)
        key = keys.get(raw) or Ed25519PublicKey.from_public_bytes(raw)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "the checkpoint's key or signature is malformed"
    keys[raw] = key
    kid = key_id(key)
    if rec.get("key_id") != kid:
        return "the checkpoint's key_id does not match its public key"
    if pinned and raw not in pinned:
        return f"the checkpoint is signed by key {kid}, not by the given key {', '.join(pinned.values())}: wrong key, or a forger's"
    try:
        key.verify(sig, chain.signed_message(rec))
    except InvalidSignature:
        return ("the checkpoint signature does not verify: the records up to here were changed after they were "
                "signed (or the signature was forged)")
    key_ids[kid] = None
    return None


def _check_revisions(paths: list[PathLike], report: Report, sites: dict[str, tuple[str, int, int]]) -> None:
    directory = next((Path(p) for p in paths if Path(p).is_dir()), None)
    if directory is None:
        files = [Path(p) for p in paths]
        directory = files[0].parent if files else None
    if directory is None or not (directory / chain.REVISIONS_DIR).is_dir():
        if sites:
            report.warnings.append("policy revisions not checked: no revisions/ directory next to the log")
        return
    for revision, (name, lineno, seq) in sites.items():
        path = directory / chain.REVISIONS_DIR / f"{revision}.json"
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            raise _Stop(Problem(name, lineno, seq, f"policy revision {revision[:12]} is not archived "
                                f"({path} missing): replay cannot load what decided")) from None
        if digest != revision:
            raise _Stop(Problem(str(path), 0, None, "the archived policy revision does not match its hash"))
