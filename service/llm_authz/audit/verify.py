"""Verifying an audit log: every hash, every link, every sequence number, every checkpoint signature.

    from llm_authz.audit.verify import verify
    report = verify(["audit/"], public_keys=[key])      # streams: constant memory
    if not report.ok:
        print(report.problem)                            # file:line: seq N: what is wrong

Verification stops at the first problem: after it, nothing in the log can be trusted anyway.
With `public_keys`, every checkpoint must be signed by one of them; without, signatures are
checked against the key each checkpoint names (this catches corruption, not a forger who signs
with a key of their own: auditors pin the key).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from llm_authz.audit import chain
from llm_authz.audit.keys import key_id, raw_public
from llm_authz.audit.reader import PathLike, segment_files
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


_decode_chain = msgspec.json.Decoder(_Chain).decode


class _Stop(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def verify(paths: Iterable[PathLike], public_keys: Sequence[Ed25519PublicKey] = (),
           check_revisions: bool = True) -> Report:
    """Check the log at `paths` (directories or segment files). Never raises for a bad log.

    A directory must hold the whole log (its first record is seq 1); given files may start
    anywhere, and the first record given is trusted as the anchor. With check_revisions, each
    revision the records name must be archived under <directory>/revisions/ and match its hash.
    """
    paths = list(paths)
    report = Report(key_pinned=bool(public_keys))
    try:
        files = segment_files(paths)
    except AuditFormatError as exc:
        report.problem = Problem(exc.file, exc.line, None, exc.message)
        return report
    report.files = [str(f) for f in files]
    from_directory = any(Path(p).is_dir() for p in paths)
    pinned = {raw_public(k): key_id(k) for k in public_keys}
    try:
        sites = _walk(files, report, pinned, from_directory)
        if check_revisions:
            _check_revisions(paths, report, sites)
    except _Stop as stop:
        report.problem = stop.problem
    return report


def _walk(files: list[Path], report: Report, pinned: dict[bytes, str],
          from_directory: bool) -> dict[str, tuple[str, int, int]]:
    """The streaming pass; returns where each policy revision is first named."""
    sha256 = hashlib.sha256
    decode = _decode_chain
    suffix_len = chain.HASH_SUFFIX_LEN
    hash_key = b',"hash":"'
    decision, checkpoint, segment = chain.DECISION, chain.CHECKPOINT, chain.SEGMENT
    keys: dict[bytes, Ed25519PublicKey] = {}
    revisions: dict[str, tuple[str, int, int]] = {}
    key_ids: dict[str, None] = {}
    prev: str | None = None
    expected = 0
    records = decisions = since_signed = 0
    last_kind = None
    prev_file = ""
    try:
        for path in files:
            name = str(path)
            lineno = 0
            first_in_file = True
            for line in _lines(path):
                lineno += 1
                tail = line[-suffix_len:].tobytes()
                if tail[-3:] != b'"}\n' or len(line) <= suffix_len or tail[:9] != hash_key:
                    if tail[-1:] != b"\n":
                        raise _Stop(Problem(name, lineno, None, "incomplete last line: a write was cut short "
                                            "(restart llm-authz to move it aside) or the file was cut"))
                    raise _Stop(Problem(name, lineno, None, "not an audit record line (no hash at its end)"))
                digest = tail[9:73].decode("ascii", "replace")
                h = sha256(line[:-suffix_len])  # the body is the line up to the hash, then "}"
                h.update(b"}")
                if h.hexdigest() != digest:
                    raise _Stop(Problem(name, lineno, _seq_of(line),
                                        "the record's hash does not match its content: the record was edited"))
                try:
                    rec = decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise _Stop(Problem(name, lineno, None, f"not a valid audit record: {exc}")) from None
                seq, prev_hash, kind = rec.seq, rec.prev_hash, rec.kind
                if rec.hash != digest:
                    raise _Stop(Problem(name, lineno, seq, "not a valid audit record (two hash members)"))
                if prev is None:
                    report.first_seq = seq
                    if from_directory and (seq != 1 or prev_hash != chain.GENESIS):
                        raise _Stop(Problem(name, lineno, seq, "the log does not start at seq 1 from the genesis "
                                            "hash: its first records or segment files were removed"))
                else:
                    if seq != expected:
                        if seq > expected:
                            what = (f"expected seq {expected} here, found {seq}: {seq - expected} record(s) removed "
                                    f"or moved{' (a segment file missing?)' if first_in_file else ''}")
                        elif digest == prev:
                            what = f"a duplicate of the record before it (seq {seq} twice)"
                        else:
                            what = (f"seq {seq} comes after seq {expected - 1}: a record was duplicated, "
                                    "inserted or moved here")
                        raise _Stop(Problem(name, lineno, seq, what))
                    if prev_hash != prev:
                        if first_in_file:
                            what = (f"this segment does not continue {prev_file}: its prev_hash is not the last "
                                    "hash of the segment before (segments swapped, replaced or from another log)")
                        else:
                            what = ("prev_hash does not link to the record before it: a record was inserted, "
                                    "removed or replaced")
                        raise _Stop(Problem(name, lineno, seq, what))
                if first_in_file and kind != segment:
                    raise _Stop(Problem(name, lineno, seq, "the file does not start with a segment header: "
                                        "its first records were removed"))
                if kind == decision:
                    decisions += 1
                    since_signed += 1
                    revision = rec.policy.revision if rec.policy is not None else None
                    if revision is not None and revision not in revisions:
                        revisions[revision] = (name, lineno, seq)
                elif kind == checkpoint:
                    report.checkpoints += 1
                    if _check_signature(orjson.loads(line), name, lineno, seq, pinned, keys, key_ids):
                        report.signed_checkpoints += 1
                        since_signed = 0
                        report.last_checkpoint_seq = seq
                    else:
                        since_signed += 1
                else:
                    since_signed += 1
                    if kind == segment and not first_in_file:
                        raise _Stop(Problem(name, lineno, seq, "a segment header in the middle of a file"))
                    if kind == chain.RECOVERY:
                        report.recoveries += 1
                    elif kind == chain.REVISION and rec.revision is not None:
                        revisions.setdefault(rec.revision, (name, lineno, seq))
                records += 1
                prev = digest
                expected = seq + 1
                first_in_file = False
                last_kind = kind
            if first_in_file:
                raise _Stop(Problem(name, 0, None, "an empty segment file"))
            if path is not files[-1] and last_kind != checkpoint:
                raise _Stop(Problem(name, lineno, expected - 1, "the segment does not end with its rotation "
                                    "checkpoint: records were removed from its end"))
            prev_file = path.name
    finally:
        report.records, report.decisions = records, decisions
        report.last_seq = expected - 1 if records else None
    report.unsigned_tail = since_signed
    report.key_ids = list(key_ids)
    report.revisions = list(revisions)
    if pinned and records and not report.signed_checkpoints:
        raise _Stop(Problem(str(files[-1]), 0, None, "no checkpoint signed by the given key"))
    if records and last_kind != checkpoint:
        report.warnings.append(
            f"the last {since_signed} record(s) (up to seq {report.last_seq}) are not yet covered by a signed "
            "checkpoint: llm-authz is running, or stopped without shutting down (or the log's end was cut)")
    elif since_signed:
        report.warnings.append(f"{since_signed} record(s) at the end are covered only by unsigned checkpoints")
    return revisions


def _lines(path: Path) -> Iterator[memoryview]:
    """The file's lines, newline included, as views of a read-only mapping: no copy, constant heap.

    The last one lacks its newline when the file ends inside a line.
    """
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return
        mapped = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ)
    if hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_SEQUENTIAL)
    view = memoryview(mapped)
    find = mapped.find
    pos = 0
    while pos < size:
        end = find(b"\n", pos)
        if end < 0:
            yield view[pos:size]
            return
        yield view[pos:end + 1]
        pos = end + 1
    # The mapping closes when the last view of it is gone.


def _seq_of(line: bytes | memoryview) -> int | None:
    try:
        seq = orjson.loads(line).get("seq")
        return seq if type(seq) is int else None
    except (orjson.JSONDecodeError, AttributeError):
        return None


def _check_signature(rec: dict[str, Any], name: str, lineno: int, seq: int, pinned: dict[bytes, str],
                     keys: dict[bytes, Ed25519PublicKey], key_ids: dict[str, None]) -> bool:
    """True for a good signature, False for an unsigned checkpoint allowed here; _Stop otherwise."""
    signature = rec.get("signature")
    if signature is None:
        if pinned:
            raise _Stop(Problem(name, lineno, seq, "the checkpoint has no signature"))
        return False
    try:
        raw = chain.unb64(rec["public_key"])
        sig = chain.unb64(signature)
        key = keys.get(raw) or Ed25519PublicKey.from_public_bytes(raw)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _Stop(Problem(name, lineno, seq, "the checkpoint's key or signature is malformed")) from None
    keys[raw] = key
    kid = key_id(key)
    if rec.get("key_id") != kid:
        raise _Stop(Problem(name, lineno, seq, "the checkpoint's key_id does not match its public key"))
    if pinned and raw not in pinned:
        raise _Stop(Problem(name, lineno, seq, f"the checkpoint is signed by key {kid}, not by the given key "
                            f"{', '.join(pinned.values())}: wrong key, or a forger's"))
    try:
        key.verify(sig, chain.signed_message(rec))
    except InvalidSignature:
        raise _Stop(Problem(name, lineno, seq, "the checkpoint signature does not verify: the records up to "
                            "here were changed after they were signed (or the signature was forged)")) from None
    key_ids[kid] = None
    return True


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
