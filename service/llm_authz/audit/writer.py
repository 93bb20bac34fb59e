"""The audit log writer: group commit, segment rotation, signed checkpoints, crash recovery.

`AuditLog.append(record)` returns only once the record is durable. Group commit without a
hand-off: the check whose record starts a batch writes it (the batch's leader). It waits for the
previous batch's write to finish (and, with a commit window, for the window), so every record
arriving meanwhile joins its batch; then it gives each record its seq and hash (see chain.py),
writes the batch with one write() and one fdatasync(), and wakes the other checks of the batch.
A check alone on a quiet service so writes its own record on its own thread: no wake-up of
another thread before or after. A background thread only signs checkpoints when the log has
been idle for their interval, and closes the log. If a write fails
(disk full, I/O error) the file is cut back to the last durable record and each waiting check gets
AuditWriteError, which it answers with a deny: no check is ever answered from an unlogged decision.

With `durability="buffered"` the batch is written but not fsynced before the checks are woken:
the record survives a crash of the service (it is in the OS page cache) but not of the machine.
Checkpoints, rotation and shutdown are fsynced in both modes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz import metrics
from llm_authz.audit import chain, retention
from llm_authz.audit.compress import fsync_dir
from llm_authz.audit.keys import key_id, raw_public
from llm_authz.audit.maintenance import Maintenance
from llm_authz.errors import AuditEncodeError, AuditWriteError
from llm_authz.policy import PolicySource, canonical_json, document_json

GENESIS = chain.GENESIS
log = logging.getLogger("llm_authz.audit")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(rfc3339: str) -> float:
    try:
        return datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return time.time()


@dataclass(frozen=True)
class AuditOptions:
    """How the log is written. Defaults match the service's config defaults."""

    durability: str = "fsync"  # fsync | buffered
    commit_window_ms: float = 0.0
    signing_key: Ed25519PrivateKey | None = None
    segment_bytes: int = 64 * 1024 * 1024
    segment_seconds: float = 3600.0
    checkpoint_records: int = 1000
    checkpoint_seconds: float = 10.0
    wait_timeout_seconds: float = 10.0
    # Storage upkeep in a background thread (audit/maintenance.py). The service's config compresses
    # with zstd by default; a bare AuditLog keeps plain segments unless told.
    compress: str = "none"  # zstd | gzip | none
    retention_days: float | None = None
    retention_bytes: int | None = None
    maintenance_seconds: float = 60.0


@dataclass
class _Batch:
    items: list[dict[str, Any]] = field(default_factory=list)
    first_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    rejected: set[int] = field(default_factory=set)  # id() of records that cannot be encoded


@dataclass(frozen=True)
class TornTail:
    """Bytes found after the last whole record of a segment at start, kept in torn/."""

    file: str
    segment: str
    offset: int
    bytes: int
    sha256: str

    def as_record(self) -> dict[str, Any]:
        return {"file": self.file, "segment": self.segment, "offset": self.offset, "bytes": self.bytes,
                "sha256": self.sha256}


class AuditLog:
    """One process's handle on one chain of an audit directory (locked: a second writer would fork it).

    `chain_name` is "main" for a single process; worker i of `serve --processes N` writes "w<i>".
    """

    def __init__(self, directory: Path, options: AuditOptions | None = None, *, durability: str | None = None,
                 chain_name: str = chain.MAIN_CHAIN):
        if not chain.valid_chain_name(chain_name):
            raise ValueError(f"invalid audit chain name {chain_name!r} (want [a-z0-9]{{1,16}})")
        self.directory = Path(directory)
        self.chain = chain_name
        opts = options or AuditOptions()
        if durability is not None:
            opts = AuditOptions(**{**opts.__dict__, "durability": durability})
        if opts.durability not in ("fsync", "buffered"):
            raise ValueError(f"unknown audit durability {opts.durability!r}")
        self.options = opts
        self._sign_key = opts.signing_key
        self._public = raw_public(opts.signing_key.public_key()) if opts.signing_key else None
        self._key_id = key_id(opts.signing_key.public_key()) if opts.signing_key else None
        self._cond = threading.Condition()
        self._batch = _Batch()
        self._stopping = False
        self._closed = False
        self._fatal: str | None = None
        # One writer at a time: a batch's leader, or the background thread (idle checkpoints, close).
        self._commit_lock = threading.Lock()
        # Writer state (only __init__ and the holder of _commit_lock touch it).
        self._fd = -1
        self._segment: Path | None = None
        self._segment_started = 0.0
        self._size = 0
        self._needs_truncate = False
        self._rotation_checkpointed = False
        self._seq = 0
        self._prev = GENESIS
        self._since_checkpoint = 0
        self._decisions_since_checkpoint = 0
        self._last_checkpoint_at = time.monotonic()
        self.commits = 0  # batches written: lets tests see group commit at work
        self.torn: list[TornTail] = []
        self.maintenance = Maintenance(self.directory, chain_name, codec=opts.compress,
                                       policy=retention.Policy(opts.retention_days, opts.retention_bytes),
                                       signing_key=opts.signing_key, interval=opts.maintenance_seconds)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / chain.REVISIONS_DIR).mkdir(exist_ok=True)
            self._lock_fd = os.open(self.directory / chain.lock_name(chain_name), os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditWriteError(f"cannot open the audit directory {self.directory}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            where = "" if chain_name == chain.MAIN_CHAIN else f" (chain {chain_name})"
            raise AuditWriteError(f"{self.directory}{where} is in use by another llm-authz process") from None
        try:
            self._open()
        except OSError as exc:
            self._release()
            raise AuditWriteError(f"cannot open the audit log in {self.directory}: {exc.strerror or exc}") from exc
        except AuditWriteError:
            self._release()
            raise
        if self._sign_key is None:
            log.warning("audit checkpoints are not signed: pass --audit-signing-key to make the log tamper-evident "
                        "against someone who can rewrite it whole")
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        self.maintenance.start()

    @classmethod
    def from_config(cls, config: Any, chain_name: str = chain.MAIN_CHAIN) -> "AuditLog":
        """The log as `serve` configures it (config.Config's audit_* fields)."""
        from llm_authz.audit.keys import load_private_key

        key = load_private_key(config.audit_signing_key) if config.audit_signing_key else None
        return cls(config.audit_dir, AuditOptions(
            durability=config.audit_durability, commit_window_ms=config.audit_commit_window_ms,
            signing_key=key, segment_bytes=config.audit_segment_bytes,
            segment_seconds=config.audit_segment_seconds, checkpoint_records=config.audit_checkpoint_records,
            checkpoint_seconds=config.audit_checkpoint_seconds, compress=config.audit_compress,
            retention_days=config.audit_retention_days, retention_bytes=config.audit_retention_bytes),
            chain_name=chain_name)

    # ---- the public interface ------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        """Add a decision record (it gets kind, seq, prev_hash and hash); return once it is durable.

        Raises AuditWriteError when it could not be written: the caller must deny.
        """
        record.setdefault("kind", chain.DECISION)
        with self._cond:
            if self._stopping or self._fatal:
                raise AuditWriteError(self._fatal or "the audit log is closed")
            batch = self._batch
            leader = not batch.items
            if leader:
                batch.first_at = time.monotonic()
            batch.items.append(record)
        if leader:
            self._lead(batch)
        if not batch.done.wait(self.options.wait_timeout_seconds):
            raise AuditWriteError("timed out waiting for the audit log to write")
        if batch.error is not None:
            raise AuditWriteError(batch.error)
        if id(record) in batch.rejected:
            raise AuditEncodeError("the decision record cannot be written as JSON")

    def archive_revision(self, source: PolicySource, bundle_revision: str | None = None) -> None:
        """Store the revision's document under revisions/<hash>.json (once) and log that it is in force.

        `bundle_revision` is the OPA bundle's manifest revision when the policies came from a bundle.
        """
        revision = source.revision
        path = self.directory / chain.REVISIONS_DIR / f"{revision}.json"
        try:
            if not (path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == revision):
                # A name of this writer's own: worker processes sharing the directory archive the same
                # revision at the same moment, and must not rename each other's half-written file.
                tmp = path.with_name(f"{path.name}.{os.getpid()}.{self.chain}.tmp")
                with tmp.open("wb") as fh:
                    fh.write(document_json(source.document))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
                fsync_dir(path.parent)
        except OSError as exc:
            raise AuditWriteError(f"cannot archive policy revision {revision[:12]}: {exc.strerror}") from exc
        record = {"kind": chain.REVISION, "time": utc_now(), "revision": revision,
                  "entrypoint": source.entrypoint, "archive": f"{chain.REVISIONS_DIR}/{revision}.json"}
        if bundle_revision is not None:
            record["bundle_revision"] = bundle_revision
        self.append(record)

    def close(self) -> None:
        """Write what is pending, a final signed checkpoint, fsync, and release the directory."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self.maintenance.close()
        self._release()  # when the writer thread died before it could

    @property
    def last_seq(self) -> int:
        return self._seq

    # ---- the writer thread ---------------------------------------------------------------------

    def _lead(self, batch: _Batch) -> None:
        """Write `batch`, whose first record is this caller's: after the commit window, once the
        previous batch is written (whatever arrived meanwhile is in this one). Always sets batch.done."""
        window = self.options.commit_window_ms / 1000.0
        if window > 0:
            delay = batch.first_at + window - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if not self._commit_lock.acquire(timeout=self.options.wait_timeout_seconds):
            with self._cond:
                if self._batch is batch:
                    self._batch = _Batch()
            batch.error = "timed out waiting for the audit log to write"
            batch.done.set()
            return
        try:
            with self._cond:
                mine = self._batch is batch
                if mine:
                    self._batch = _Batch()
                closed = self._closed
            if not mine:
                return  # close() wrote it
            if closed:
                batch.error = "the audit log is closed"
                batch.done.set()
                return
            self._commit(batch)
        except BaseException as exc:  # a bug here must fail the batch and stop the log, not hang or allow
            log.exception("the audit writer failed")
            with self._cond:
                self._fatal = f"the audit writer stopped: {type(exc).__name__}"
            batch.error = self._fatal
            batch.done.set()
        finally:
            self._commit_lock.release()

    def _run(self) -> None:
        """The background thread: a signed checkpoint when the log has been idle for its interval;
        on close, the batch still pending, then the final checkpoint."""
        try:
            while True:
                with self._cond:
                    while not self._stopping:
                        due = self._checkpoint_due_in()
                        if due is not None and due <= 0:
                            break
                        self._cond.wait(self.options.checkpoint_seconds if due is None else due)
                    stopping = self._stopping
                with self._commit_lock:
                    if stopping:
                        with self._cond:
                            batch, self._batch = self._batch, _Batch()
                        if batch.items:
                            self._commit(batch)
                        self._shutdown()
                        with self._cond:
                            self._closed = True
                        return
                    if (self._checkpoint_due_in() or 0) <= 0 and self._since_checkpoint:
                        try:
                            self._checkpoint("interval")
                        except OSError as exc:
                            log.error("audit checkpoint failed: %s", exc.strerror or exc)
                            self._last_checkpoint_at = time.monotonic()  # try again one interval later
        except BaseException as exc:  # a bug here must fail every waiting check, not hang it
            log.exception("the audit writer stopped")
            with self._cond:
                self._fatal = f"the audit writer stopped: {type(exc).__name__}"
                self._closed = True
                batch, self._batch = self._batch, _Batch()
            if batch.items and not batch.done.is_set():
                batch.error = self._fatal
                batch.done.set()

    def _checkpoint_due_in(self) -> float | None:
        if not self._since_checkpoint:
            return None
        return self._last_checkpoint_at + self.options.checkpoint_seconds - time.monotonic()

    def _commit(self, batch: _Batch) -> None:
        started = time.perf_counter()
        try:
            if self._rotation_due():
                self._rotate()
            try:
                self._write_batch(batch.items)
            except (TypeError, ValueError):  # a record orjson cannot write: fail that check alone
                batch.rejected = {id(r) for r in batch.items if not _encodable(r)}
                log.error("%d audit record(s) cannot be encoded as JSON; their checks deny", len(batch.rejected))
                self._write_batch([r for r in batch.items if id(r) not in batch.rejected])
        except OSError as exc:
            reason = exc.strerror or str(exc)
            log.error("audit log write failed (%d records not logged, their checks deny): %s",
                      len(batch.items), reason)
            batch.error = f"audit write failed: {reason}"
        else:
            self.commits += 1
            metrics.AUDIT_COMMIT_SECONDS.observe(time.perf_counter() - started)
            metrics.AUDIT_BATCH_RECORDS.observe(len(batch.items))
        batch.done.set()

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        """Write records, plus a checkpoint when N decisions or T seconds have passed since the last."""
        decisions = sum(1 for r in records if r.get("kind") == chain.DECISION)
        reason = None
        if self._decisions_since_checkpoint + decisions >= self.options.checkpoint_records:
            reason = "records"
        elif (self._checkpoint_due_in() or 0) <= 0 and self._since_checkpoint:
            reason = "interval"
        if reason:
            records = [*records, self._checkpoint_record(reason)]
        self._write_records(records, sync=self.options.durability == "fsync" or reason is not None)

    def _shutdown(self) -> None:
        try:
            if self._fd >= 0:
                self._checkpoint("shutdown")
                os.close(self._fd)
                self._fd = -1
        except OSError as exc:
            log.error("could not write the final audit checkpoint: %s", exc.strerror or exc)
        finally:
            self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # ---- records, checkpoints, segments --------------------------------------------------------

    def _checkpoint_record(self, reason: str) -> dict[str, Any]:
        return {"kind": chain.CHECKPOINT, "reason": reason, "time": utc_now()}

    def _checkpoint(self, reason: str) -> None:
        self._write_records([self._checkpoint_record(reason)], sync=True)

    def _write_records(self, records: list[dict[str, Any]], sync: bool) -> None:
        """Chain, encode and write records; on failure cut the file back and leave the state as it was."""
        seq, prev = self._seq, self._prev
        since, decisions, checkpointed = self._since_checkpoint, self._decisions_since_checkpoint, False
        lines = []
        for rec in records:
            seq += 1
            rec["seq"] = seq
            rec["prev_hash"] = prev
            kind = rec.get("kind")
            if kind == chain.CHECKPOINT:
                rec["records"] = since
                self._sign(rec)
                since = decisions = 0
                checkpointed = True
            else:
                since += 1
                decisions += kind == chain.DECISION
            line, prev = chain.encode(rec)
            lines.append(line)
        data = b"".join(lines)
        self._write_bytes(data, sync)
        self._seq, self._prev, self._size = seq, prev, self._size + len(data)
        idle_until_now = not self._since_checkpoint
        self._since_checkpoint, self._decisions_since_checkpoint = since, decisions
        if idle_until_now and since:
            with self._cond:
                self._cond.notify()  # the background thread now has an interval checkpoint to time
        if checkpointed:
            self._last_checkpoint_at = time.monotonic()
        for rec in records:
            metrics.AUDIT_RECORDS.labels(kind=rec.get("kind", "")).inc()

    def _sign(self, checkpoint: dict[str, Any]) -> None:
        if self._sign_key is None:
            return
        checkpoint["key_id"] = self._key_id
        checkpoint["public_key"] = chain.b64(self._public or b"")
        checkpoint["signature"] = chain.b64(self._sign_key.sign(chain.signed_message(checkpoint)))

    def _write_bytes(self, data: bytes, sync: bool) -> None:
        if self._needs_truncate:
            os.ftruncate(self._fd, self._size)
            self._needs_truncate = False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if sync:
                os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._needs_truncate = True
            raise

    def _rotation_due(self) -> bool:
        return (self._size >= self.options.segment_bytes
                or time.time() - self._segment_started >= self.options.segment_seconds)

    def _rotate(self) -> None:
        """Close the segment with a signed checkpoint; the next one starts from its last hash."""
        if not self._rotation_checkpointed:
            self._checkpoint("rotation")
            self._rotation_checkpointed = True
        previous = self._segment
        self._create_segment(previous.name if previous else None)

    def _create_segment(self, previous: str | None) -> None:
        path = self.directory / chain.segment_name(self._seq + 1, self.chain)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o640)
        old_fd, old_path, old_size = self._fd, self._segment, self._size
        self._fd, self._segment, self._size = fd, path, 0
        try:
            fsync_dir(self.directory)
            header = {"kind": chain.SEGMENT, "format": chain.FORMAT, "time": utc_now(), "segment": path.name,
                      "previous": previous}
            if self.chain != chain.MAIN_CHAIN:
                header["chain"] = self.chain
            self._write_records([header], sync=True)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            self._fd, self._segment, self._size = old_fd, old_path, old_size
            raise
        if old_fd >= 0:
            os.close(old_fd)
        self._segment_started = time.time()
        self._rotation_checkpointed = False
        if previous is not None:
            self.maintenance.segment_closed()

    # ---- start: find the chain's end, recover a torn tail --------------------------------------

    def _open(self) -> None:
        segments = sorted(p for p in self.directory.iterdir()
                          if chain.is_segment_name(p.name, self.chain) and p.is_file())
        last: dict[str, Any] | None = None
        while segments:
            path = segments[-1]
            good_end, first, last = _scan(path)
            if good_end < path.stat().st_size:
                self.torn.append(self._move_aside(path, good_end))
            if last is not None:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                self._segment, self._size = path, good_end
                self._segment_started = _epoch(first["time"]) if first else time.time()
                self._seq, self._prev = int(last["seq"]), str(last["hash"])
                break
            path.unlink()  # nothing whole in it: its bytes are in torn/, the previous segment goes on
            fsync_dir(self.directory)
            segments.pop()
        if self._fd < 0:
            self._create_segment(None)
        clean = last is not None and last.get("kind") == chain.CHECKPOINT and last.get("reason") == "shutdown"
        if self.torn or (last is not None and not clean):
            self._write_records([{
                "kind": chain.RECOVERY, "time": utc_now(),
                "reason": "torn_tail" if self.torn else "unclean_shutdown",
                "after_seq": int(last["seq"]) if last else 0,
                "torn": [t.as_record() for t in self.torn],
            }, self._checkpoint_record("recovery")], sync=True)
            log.warning("audit log recovered after an unclean stop at seq %s%s", last["seq"] if last else 0,
                        f"; {sum(t.bytes for t in self.torn)} torn bytes kept in {chain.TORN_DIR}/"
                        if self.torn else "")

    def _move_aside(self, path: Path, good_end: int) -> TornTail:
        """Copy the bytes after the last whole record to torn/, then cut them from the segment."""
        torn_dir = self.directory / chain.TORN_DIR
        torn_dir.mkdir(exist_ok=True)
        with path.open("rb") as src:
            src.seek(good_end)
            data = src.read()
        n = 0
        while True:
            target = torn_dir / f"{path.name}.at-{good_end}{f'.{n}' if n else ''}.torn"
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                break
            except FileExistsError:
                n += 1
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(torn_dir)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning("%s: %d bytes after the last whole record (offset %d) moved to %s", path.name, len(data),
                    good_end, target)
        return TornTail(file=f"{chain.TORN_DIR}/{target.name}", segment=path.name, offset=good_end,
                        bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def _scan(path: Path) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
    """(end offset of the last whole record, first record, last record) of a segment, streaming."""
    good_end = offset = 0
    first_line = last_line = None
    with path.open("rb") as fh:
        for line in fh:
            offset += len(line)
            if chain.line_hash_ok(line):
                good_end, last_line = offset, line
                if first_line is None:
                    first_line = line
    try:
        first = chain.parse(first_line) if first_line else None
        last = chain.parse(last_line) if last_line else None
    except ValueError as exc:
        raise AuditWriteError(f"{path}: unreadable record at the end of the log: {exc}") from exc
    return good_end, first, last


def _encodable(record: dict[str, Any]) -> bool:
    try:
        canonical_json(record)
        return True
    except (TypeError, ValueError):
        return False
