"""Compressing a closed segment in place, atomically (docs/audit.md "Layout", Compressed segments).

The compressed copy is written to `<segment>.<ext>.tmp`, fsynced, read back and compared with the
plain file (SHA-256 of the decompressed bytes), renamed to `<segment>.<ext>`, the directory
fsynced, and only then is the plain file removed. A crash at any point leaves either the plain
file alone, or both (readers use the plain one; the next pass finishes the job), never neither.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import zstandard

from llm_authz.audit import segments
from llm_authz.errors import LlmAuthzError

ZSTD_LEVEL = 3  # fast enough to keep up with a busy chain on one core, ~15-20x on decision records
GZIP_LEVEL = 6
_CHUNK = 1 << 20


class CompressError(LlmAuthzError):
    """The compressed copy could not be made or did not read back as the original."""


def fsync_dir(path: Path) -> None:
    """Make a file's creation, rename or removal in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compressed_path(plain: Path, codec: str) -> Path:
    return plain.with_name(plain.name + segments.CODECS[codec])


def compress_segment(plain: Path, codec: str) -> Path:
    """Replace the closed segment `plain` by its compressed copy; returns the new file's path."""
    if codec not in segments.CODECS:
        raise CompressError(f"unknown codec {codec!r}")
    target = compressed_path(plain, codec)
    tmp = target.with_name(target.name + ".tmp")
    source_digest = hashlib.sha256()
    try:
        stat = plain.stat()
        with plain.open("rb") as src, tmp.open("wb") as dst:
            if codec == "zstd":
                writer = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).stream_writer(
                    dst, size=stat.st_size, closefd=False)
            else:
                writer = gzip.GzipFile(filename="", fileobj=dst, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
            with writer:
                while chunk := src.read(_CHUNK):
                    source_digest.update(chunk)
                    writer.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if _digest(tmp, codec) != source_digest.hexdigest():
            raise CompressError(f"{tmp.name} does not decompress to {plain.name}'s bytes")
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the segment's age stays its close time
        os.replace(tmp, target)
        fsync_dir(plain.parent)
        plain.unlink()
        fsync_dir(plain.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CompressError(f"cannot compress {plain.name}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _digest(path: Path, codec: str) -> str:
    digest = hashlib.sha256()
    for chunk in segments.iter_chunks(path, codec=codec):
        digest.update(chunk)
    return digest.hexdigest()


def finish_interrupted(directory: Path, chain: str) -> None:
    """Tidy what a crash mid-compression of `chain` left (only the chain's own writer may: another
    process may be compressing its own chain right now): drop `*.tmp` copies, and a compressed copy
    whose plain file is still there (readers use the plain one; it is compressed again)."""
    for path in directory.iterdir():
        name = path.name
        seg = segments.segment_of(path.with_name(name[:-4]) if name.endswith(".tmp") else path)
        if seg is None or seg.chain != chain:
            continue
        if name.endswith(".tmp") or (seg.compressed and (directory / seg.name).exists()):
            path.unlink(missing_ok=True)
