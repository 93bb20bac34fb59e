"""Segment files of an audit directory: finding them, and reading them plain or compressed.

Every reader of the log (verify, export, replay, the shipper, archive) finds segments and opens
them here, so a compressed segment (`<segment>.zst` or `<segment>.gz`, see docs/audit.md
"Layout") reads exactly like the plain one it replaced: the decompressed bytes are the original
file's bytes, and the hash chain is over those lines.

    for seg in segments.list_segments("audit/"):
        for line in segments.iter_lines(seg.path):     # bytes, newline included, streaming
            ...

A directory may briefly hold a segment both plain and compressed (a crash between the rename of
the compressed copy and the removal of the plain file): the plain one is used. `*.tmp` files are
never segments.
"""

from __future__ import annotations

import gzip
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from llm_authz.audit import chain as chainfmt
from llm_authz.errors import AuditFormatError

MAIN_CHAIN = chainfmt.MAIN_CHAIN
CODECS = {"zstd": ".zst", "gzip": ".gz"}
_SUFFIX_CODEC = {suffix: codec for codec, suffix in CODECS.items()}
READ_CHUNK = 4 * 1024 * 1024
_ZSTD_INPUT = 64 * 1024  # compressed bytes per decompression step (~2 MiB of decision records out)
_ZSTD_OUTPUT = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment file: `name` is its plain name (what its `segment` record says), `path` the file."""

    path: Path
    name: str
    chain: str
    first_seq: int
    codec: str | None  # None (plain), "zstd" or "gzip"

    @property
    def compressed(self) -> bool:
        return self.codec is not None

    def sort_key(self) -> tuple[tuple[bool, int, str], int]:
        return (chainfmt.chain_order(self.chain), self.first_seq)


def parse_name(name: str) -> tuple[str, int, str | None] | None:
    """(chain, first seq, codec) of a segment file name, plain or compressed, or None."""
    plain = plain_name(name)
    parsed = chainfmt.parse_segment_name(plain)
    if parsed is None:
        return None
    return parsed[0], parsed[1], _SUFFIX_CODEC.get(name[len(plain):])


def plain_name(name: str) -> str:
    """The segment's plain file name, whatever codec suffix `name` has."""
    for suffix in _SUFFIX_CODEC:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_segment_file(name: str) -> bool:
    return parse_name(name) is not None


def segment_of(path: Path) -> Segment | None:
    parsed = parse_name(path.name)
    if parsed is None:
        return None
    chain, first_seq, codec = parsed
    return Segment(path, plain_name(path.name), chain, first_seq, codec)


def list_segments(directory: str | Path) -> list[Segment]:
    """The directory's segments in log order (chain `main` first, then by chain name; by seq in a
    chain), one per segment: the plain file when both it and a compressed copy are present."""
    found: dict[str, Segment] = {}
    for path in Path(directory).iterdir():
        seg = segment_of(path)
        if seg is None or not path.is_file():
            continue
        held = found.get(seg.name)
        if held is None or (held.compressed and not seg.compressed):
            found[seg.name] = seg
    return sorted(found.values(), key=Segment.sort_key)


def current_path(path: str | Path) -> Path:
    """Where a segment listed a moment ago is now: a plain segment that the service compressed
    since (its plain file removed) is read from its compressed copy. Other paths are returned as
    they are."""
    path = Path(path)
    if path.exists() or path.suffix in _SUFFIX_CODEC:
        return path
    for suffix in _SUFFIX_CODEC:
        alt = path.with_name(path.name + suffix)
        if alt.exists():
            return alt
    return path


def open_segment(path: str | Path, codec: str | None = "auto") -> IO[bytes]:
    """A binary stream of the segment's (decompressed) bytes; the codec comes from the file name
    unless given (None for plain). Close it when done."""
    path = Path(path)
    if codec == "auto":
        codec = _SUFFIX_CODEC.get(path.suffix)
    raw = path.open("rb")
    if codec is None:
        return raw
    try:
        if codec == "zstd":
            return zstandard.ZstdDecompressor().stream_reader(raw, read_size=READ_CHUNK, closefd=True)
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    except BaseException:
        raw.close()
        raise


def iter_chunks(path: str | Path, size: int = READ_CHUNK, codec: str | None = "auto") -> Iterator[bytes]:
    """The segment's bytes in chunks of about `size` (decompressed as they are read).

    A compressed file that cannot be decompressed (corrupt, or cut short: a zstd frame that does
    not end, a gzip member without its trailer) raises AuditFormatError.
    """
    path = current_path(path) if codec == "auto" else Path(path)
    if codec == "auto":
        codec = _SUFFIX_CODEC.get(path.suffix)
    try:
        if codec == "zstd":
            yield from _zstd_chunks(path)
            return
        with open_segment(path, codec) as stream:
            while chunk := stream.read(size):
                yield chunk
    except (zstandard.ZstdError, EOFError, gzip.BadGzipFile) as exc:
        raise AuditFormatError(str(path), 0, f"the compressed segment cannot be read: {exc}") from None


def _zstd_chunks(path: Path) -> Iterator[bytes]:
    """Frame by frame, so that a frame cut short is an error rather than a quiet end of data.
    Small input steps (~2 MiB out each) keep the output in cache for the reader."""
    dctx = zstandard.ZstdDecompressor()
    with path.open("rb") as fh:
        dobj = dctx.decompressobj(write_size=_ZSTD_OUTPUT)
        pending = b""
        while True:
            data = pending or fh.read(_ZSTD_INPUT)
            pending = b""
            if not data:
                break
            out = dobj.decompress(data)
            if out:
                yield out
            if dobj.eof:
                pending = dobj.unused_data
                dobj = dctx.decompressobj(write_size=_ZSTD_OUTPUT)
                if not pending:
                    nxt = fh.read(_ZSTD_INPUT)
                    if not nxt:
                        return
                    pending = nxt
        raise EOFError("the zstd frame ends before its end (the file was cut short)")


def prefetched(chunks: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """The same chunks, produced by a thread running ahead of the reader: decompression (which
    releases the GIL) overlaps the reader's work on another core. Errors reach the reader."""
    slots: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: tuple[bytes | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the reader is gone

    def produce() -> None:
        try:
            for chunk in chunks:
                if not offer((chunk, None)):
                    return
            offer((None, None))
        except BaseException as exc:  # handed to the reader, raised there
            offer((None, exc))

    thread = threading.Thread(target=produce, name="segment-decompress", daemon=True)
    thread.start()
    try:
        while True:
            chunk, error = slots.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()
        thread.join()


def iter_line_views(path: str | Path) -> Iterator[memoryview]:
    """The segment's lines as views into decompressed chunks (newline included; the last one lacks
    it when the file ends inside a line): no copy of the line is made, except of the one line
    that straddles two chunks. Decompression runs ahead in a thread (see `prefetched`)."""
    carry = b""
    for chunk in prefetched(iter_chunks(path)):
        find = chunk.find
        pos = 0
        if carry:
            newline = find(b"\n")
            if newline < 0:
                carry += chunk
                continue
            yield memoryview(carry + chunk[:newline + 1])
            pos = newline + 1
        view = memoryview(chunk)
        while True:
            newline = find(b"\n", pos)
            if newline < 0:
                break
            yield view[pos:newline + 1]
            pos = newline + 1
        carry = chunk[pos:] if pos < len(chunk) else b""
    if carry:
        yield memoryview(carry)


def iter_lines(path: str | Path) -> Iterator[bytes]:
    """The segment's lines as bytes, newline included, streaming (constant memory)."""
    path = current_path(path)
    if path.suffix not in _SUFFIX_CODEC:
        with path.open("rb") as fh:
            yield from fh
        return
    for view in iter_line_views(path):
        yield view.tobytes()


def last_line(path: str | Path) -> bytes | None:
    """The segment's last whole line (streams through a compressed file)."""
    path = Path(path)
    last = None
    if path.suffix not in _SUFFIX_CODEC:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            back = min(size, 1 << 16)
            while True:
                fh.seek(size - back)
                tail = fh.read(back)
                cut = tail.rfind(b"\n", 0, len(tail) - 1)
                if cut >= 0 or back == size:
                    line = tail[cut + 1:]
                    return line if line.endswith(b"\n") else None
                back = min(size, back * 4)
    for view in iter_line_views(path):
        if view[-1:] == b"\n":
            last = view
    return None if last is None else last.tobytes()
