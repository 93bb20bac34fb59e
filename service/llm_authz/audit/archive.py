"""Archiving an audit log to a directory or to object storage (S3), and reading it back.

    llm-authz audit archive ./audit --to /mnt/archive/audit
    llm-authz audit archive ./audit --to s3://bucket/llm-authz/replica-0

What is copied: every closed segment of every chain (as it is on disk: compressed or plain; the
open segment is still being written and waits for the next run), every revision under
`revisions/`, and `pruned.jsonl`; then `SHA256SUMS` (`sha256sum -c` format) listing every archived
file with its SHA-256. A run copies only what the archive does not hold yet, so it can run from
cron after each rotation. The archive has the audit directory's layout: `audit verify` and
`replay` read a local archive as they read the directory itself (and check `SHA256SUMS`: a file
listed there that is missing or changed fails). An `s3://` archive is downloaded to a temporary
directory first (`local_copy`), then read the same way.

S3 goes through boto3 with its usual configuration (credentials chain, `AWS_REGION`,
`AWS_ENDPOINT_URL` for an S3-compatible store).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llm_authz.audit import chain, retention, segments
from llm_authz.audit.compress import fsync_dir
from llm_authz.errors import LlmAuthzError

SUMS_FILE = "SHA256SUMS"
_CHUNK = 1 << 20


class ArchiveError(LlmAuthzError):
    """The archive cannot be written or read (bad destination, storage error, a hash mismatch)."""


@dataclass
class ArchiveResult:
    destination: str
    copied: list[str] = field(default_factory=list)
    skipped: int = 0
    bytes: int = 0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parse_sums(text: str) -> dict[str, str]:
    """name -> sha256 from SHA256SUMS text (`<hex>  <name>` lines)."""
    out = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if sep and len(digest) == 64 and name:
            out[name] = digest
    return out


def format_sums(sums: dict[str, str]) -> bytes:
    return "".join(f"{sums[name]}  {name}\n" for name in sorted(sums)).encode()


# ---- destinations --------------------------------------------------------------------------------

class Destination(Protocol):
    def read(self, name: str) -> bytes | None: ...
    def put_file(self, name: str, source: Path, sha256: str) -> None: ...
    def put_bytes(self, name: str, data: bytes) -> None: ...


class LocalDestination:
    """A directory: each file written to a temporary name, fsynced, renamed, the directory fsynced."""

    def __init__(self, root: Path):
        self.root = root

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def put_file(self, name: str, source: Path, sha256: str) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with source.open("rb") as src, tmp.open("wb") as dst:
            digest = hashlib.sha256()
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ArchiveError(f"{source} changed while it was copied")
        os.replace(tmp, target)
        fsync_dir(target.parent)

    def put_bytes(self, name: str, data: bytes) -> None:
        target = self.root / name
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)


def split_s3(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, "prefix/") ("" for no prefix)."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ArchiveError(f"{url}: no bucket (want s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client() -> Any:
    import boto3

    return boto3.client("s3")


class S3Destination:
    """s3://bucket/prefix through boto3. Each object carries its SHA-256 (metadata `sha256`, and
    S3's own SHA-256 checksum, which the store verifies on upload)."""

    def __init__(self, url: str, client: Any = None):
        self.bucket, self.prefix = split_s3(url)
        self.client = client or s3_client()

    def read(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def put_file(self, name: str, source: Path, sha256: str) -> None:
        self.client.upload_file(str(source), self.bucket, self.prefix + name,
                                ExtraArgs={"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"})

    def put_bytes(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data, ChecksumAlgorithm="SHA256")


def destination(to: str) -> Destination:
    if to.startswith("s3://"):
        return S3Destination(to)
    if "://" in to:
        raise ArchiveError(f"{to}: an archive is a directory or s3://bucket/prefix")
    root = Path(to)
    root.mkdir(parents=True, exist_ok=True)
    return LocalDestination(root)


# ---- archiving -----------------------------------------------------------------------------------

def closed_segments(directory: Path) -> list[segments.Segment]:
    """Every chain's segments but its newest (the open one)."""
    by_chain: dict[str, list[segments.Segment]] = {}
    for seg in segments.list_segments(directory):
        by_chain.setdefault(seg.chain, []).append(seg)
    return [s for segs in by_chain.values() for s in segs[:-1]]


def archive(directory: Path, to: str, dest: Destination | None = None) -> ArchiveResult:
    """Copy what the archive at `to` does not hold yet; SHA256SUMS last. Raises ArchiveError."""
    directory = Path(directory)
    if not directory.is_dir() or not segments.list_segments(directory):
        raise ArchiveError(f"{directory}: not an audit directory (no decisions-*.jsonl)")
    try:
        dest = dest or destination(to)
        result = ArchiveResult(to)
        held = parse_sums((dest.read(SUMS_FILE) or b"").decode("utf-8", "replace"))
        held_segments = {segments.plain_name(name) for name in held}
        for seg in closed_segments(directory):
            if seg.name in held_segments:
                result.skipped += 1
                continue
            path = _current(directory, seg)
            _copy(dest, path.name, path, held, result)
        revisions = directory / chain.REVISIONS_DIR
        for path in sorted(revisions.glob("*.json")) if revisions.is_dir() else []:
            name = f"{chain.REVISIONS_DIR}/{path.name}"
            if name in held:
                result.skipped += 1
            else:
                _copy(dest, name, path, held, result)
        manifest = directory / retention.PRUNED_FILE
        if manifest.exists():
            data = manifest.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if held.get(retention.PRUNED_FILE) != digest:
                dest.put_bytes(retention.PRUNED_FILE, data)
                held[retention.PRUNED_FILE] = digest
                result.copied.append(retention.PRUNED_FILE)
                result.bytes += len(data)
        dest.put_bytes(SUMS_FILE, format_sums(held))
    except OSError as exc:
        raise ArchiveError(f"cannot archive to {to}: {exc.strerror or exc}") from exc
    except Exception as exc:  # boto3/botocore errors: no credentials, no bucket, denied...
        if isinstance(exc, LlmAuthzError):
            raise
        raise ArchiveError(f"cannot archive to {to}: {type(exc).__name__}: {exc}") from exc
    return result


def _current(directory: Path, seg: segments.Segment) -> Path:
    """The segment's file now: compression may have replaced the plain file since it was listed."""
    if seg.path.exists():
        return seg.path
    for now in segments.list_segments(directory):
        if now.name == seg.name:
            return now.path
    raise ArchiveError(f"{seg.name} went away while archiving (pruned?): run the archive again")


def _copy(dest: Destination, name: str, path: Path, held: dict[str, str], result: ArchiveResult) -> None:
    digest = sha256_file(path)
    dest.put_file(name, path, digest)
    held[name] = digest
    result.copied.append(name)
    result.bytes += path.stat().st_size


# ---- reading an archive --------------------------------------------------------------------------

def check_sums(directory: Path) -> tuple[int, str] | None:
    """(line, problem) for the first file SHA256SUMS lists that is missing or changed; None if all match."""
    path = Path(directory) / SUMS_FILE
    if not path.exists():
        return None
    for number, line in enumerate(path.read_text("utf-8", "replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or name.startswith("/") or ".." in Path(name).parts:
            return number, "not a SHA256SUMS line"
        target = Path(directory) / name
        if not target.is_file():
            return number, f"{name} is listed in the archive but missing: archived files were removed"
        if sha256_file(target) != digest:
            return number, f"{name} does not match its archived SHA-256: it was changed after archiving"
    return None


@contextlib.contextmanager
def local_copy(paths: Sequence[str | Path]) -> Iterator[list[str]]:
    """The paths with every s3:// archive downloaded to a temporary directory (removed after)."""
    out: list[str] = []
    with contextlib.ExitStack() as stack:
        for item in paths:
            text = str(item)
            if text.startswith("s3://"):
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llm-authz-archive-")))
                download(text, tmp)
                out.append(str(tmp))
            else:
                out.append(text)
        yield out


def download(url: str, target: Path, client: Any = None) -> int:
    """Every object under s3://bucket/prefix into `target` (same relative names); returns the count."""
    bucket, prefix = split_s3(url)
    client = client or s3_client()
    count = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                parts = Path(name).parts
                if not name or name.startswith("/") or ".." in parts or len(parts) > 2:
                    continue  # not a file of the archive layout
                local = target / name
                local.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(local))
                count += 1
    except Exception as exc:
        raise ArchiveError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    if not count:
        raise ArchiveError(f"{url}: no archived files there")
    return count


__all__ = ["ArchiveError", "ArchiveResult", "archive", "check_sums", "download", "local_copy"]
