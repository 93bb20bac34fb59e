"""The replay runner: stream decision records, re-evaluate them in worker processes, classify each.

Verify mode re-evaluates every record against the archived revision named in it and compares with
the logged result. Impact mode evaluates a candidate (policies and/or tenants; what is not named
comes from each record's own revision) and reports every decision that would change.

Records are read as raw lines by the parent and parsed by the workers, a bounded number of
batches in flight, so memory does not grow with the log. Workers are started with `spawn`: the
OPA engine runs Go threads that do not survive a fork.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from llm_authz.audit import reader, segments
from llm_authz.audit.compact import full_input
from llm_authz.decision import from_result
from llm_authz.engine.base import UNDEFINED
from llm_authz.engine.goruntime import GOGC_DEFAULT
from llm_authz.engine.projection import project
from llm_authz.errors import LlmAuthzError, PolicyError
from llm_authz.policy import PolicySource, canonical_json, read_data, read_modules
from llm_authz.replay.determinism import non_deterministic_builtins, reads_masked_input
from llm_authz.tenants import load_tenants

BATCH = 256
_DECISION_MARK = b'"kind":"decision"'

# Outcome kinds
MATCH, MISMATCH, FLIP, SAME, UNREPRODUCIBLE = "match", "mismatch", "flip", "same", "unreproducible"


class ReplayInputError(LlmAuthzError):
    """Bad arguments or unreadable input (exit 2)."""


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None
    model: str | None = None

    def match(self, record: dict[str, Any]) -> bool:
        if self.tenant is not None and record.get("tenant") != self.tenant:
            return False
        if self.model is not None and record.get("model") != self.model:
            return False
        if self.since is not None or self.until is not None:
            when = parse_time(record.get("time"))
            if when is None or (self.since and when < self.since) or (self.until and when >= self.until):
                return False
        return True


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


@dataclass(frozen=True)
class Candidate:
    """A candidate policy set: modules and non-tenant data from `policies`, tenants from `tenants`."""

    modules: dict[str, str] | None = None
    policy_data: dict[str, Any] | None = None
    tenants: dict[str, Any] | None = None

    @classmethod
    def load(cls, policies: Path | None, tenants: Path | None) -> "Candidate | None":
        if policies is None and tenants is None:
            return None
        modules = data = tenant_data = None
        try:
            if policies is not None:
                modules = read_modules(policies)
                data = read_data(policies)
                data.pop("tenants", None)
            if tenants is not None:
                loaded, errors = load_tenants(tenants)
                if errors:
                    raise ReplayInputError("candidate tenants are invalid:\n" + "\n".join(f"  {e}" for e in errors))
                tenant_data = {tid: tf.tenant.policy_data() for tid, tf in sorted(loaded.items())}
        except (OSError, LlmAuthzError) as exc:
            raise ReplayInputError(str(exc)) from exc
        return cls(modules, data, tenant_data)

    def apply(self, logged: PolicySource) -> PolicySource:
        data = dict(logged.data) if self.policy_data is None else {**self.policy_data}
        data["tenants"] = self.tenants if self.tenants is not None else logged.data.get("tenants", {})
        return PolicySource(modules=self.modules if self.modules is not None else logged.modules,
                            data=data, entrypoint=logged.entrypoint)


@dataclass(slots=True)
class Outcome:
    kind: str
    seq: int
    decision_id: str
    tenant: str | None
    model: str | None
    revision: str
    logged: dict[str, Any]
    replayed: dict[str, Any] | None = None
    detail: str | None = None
    test_case: dict[str, Any] | None = None  # input, expected result and data, when tests are emitted

    def as_dict(self) -> dict[str, Any]:
        out = {"decision_id": self.decision_id, "seq": self.seq, "tenant": self.tenant, "model": self.model,
               "revision": self.revision}
        if self.kind == FLIP:
            out.update(before=self.logged, after=self.replayed, direction=direction(self.logged, self.replayed))
        else:
            out.update(logged=self.logged, replayed=self.replayed)
        if self.detail:
            out["detail"] = self.detail
        return out


def direction(before: dict[str, Any], after: dict[str, Any] | None) -> str:
    if after is None:
        return "unknown"
    if before["allowed"] and not after["allowed"]:
        return "allow→deny"
    if not before["allowed"] and after["allowed"]:
        return "deny→allow"
    if before["status"] != after["status"]:
        return "status changed"
    return "reasons changed"


# ---- the worker side ----------------------------------------------------------------------------

def _summary(result: Any) -> dict[str, Any]:
    """allowed, status, reasons of a raw result, as the service would have answered."""
    if isinstance(result, dict) and set(result) == {"error"}:
        return {"allowed": False, "status": 500, "reasons": ["policy_error"]}
    try:
        return from_result(UNDEFINED if result is None else result).summary()
    except PolicyError:
        return {"allowed": False, "status": 500, "reasons": ["policy_error"]}


def _is_error(result: Any) -> bool:
    return isinstance(result, dict) and set(result) == {"error"}


class _Worker:
    """Per-process state: compiled engines per revision and a memo of identical inputs."""

    def __init__(self, audit_dir: str, candidate: Candidate | None, emit: bool):
        self.audit_dir = audit_dir
        self.candidate = candidate
        self.emit = emit
        self.sources: dict[str, PolicySource] = {}
        self.engines: dict[str, Any] = {}
        self.unsafe: dict[str, list[str]] = {}
        self.memo: dict[tuple[str, bytes], Any] = {}

    def source(self, revision: str) -> PolicySource:
        if revision not in self.sources:
            logged = PolicySource.from_document(reader.load_revision(self.audit_dir, revision))
            self.sources[revision] = self.candidate.apply(logged) if self.candidate else logged
        return self.sources[revision]

    def evaluate(self, revision: str, input_doc: Any) -> Any:
        source = self.source(revision)
        key = source.revision
        if key not in self.engines:
            from llm_authz.engine.embedded import EmbeddedEngine

            self.engines[key] = EmbeddedEngine(source.modules, source.data)
            self.unsafe[key] = non_deterministic_builtins(source.modules)
        # Identical inputs give identical results (non-deterministic policies are reported, not
        # matched): the memo is keyed on the part of the input the policy can read.
        memo_key = (key, canonical_json(project(input_doc, self.engines[key].projection)))
        if memo_key in self.memo:
            return self.memo[memo_key]
        try:
            value = self.engines[key].evaluate(source.entrypoint, input_doc)
            result = None if value is UNDEFINED else value
        except PolicyError as exc:
            result = {"error": str(exc)[:1000]}
        if len(self.memo) > 100_000:
            self.memo.clear()
        self.memo[memo_key] = result
        return result

    def run(self, lines: list[bytes], filters: Filters) -> tuple[int, list[Outcome]]:
        skipped = 0
        outcomes = []
        for line in lines:
            record = orjson.loads(line)
            if not filters.match(record):
                skipped += 1
                continue
            outcomes.append(self.one(record))
        return skipped, outcomes

    def one(self, record: dict[str, Any]) -> Outcome:
        revision = record.get("policy", {}).get("revision", "")
        logged_result = record.get("result")
        logged = {"allowed": bool(record.get("allowed")), "status": record.get("status"),
                  "reasons": list(record.get("reasons") or [])}
        out = Outcome(kind=MATCH, seq=record.get("seq", 0), decision_id=record.get("decision_id", ""),
                      tenant=record.get("tenant"), model=record.get("model"), revision=revision, logged=logged)
        input_doc = full_input(record)
        if input_doc is None:
            out.kind, out.detail = UNREPRODUCIBLE, "the check failed before its input was built"
            return out
        if record.get("unencodable"):
            # values JSON cannot hold were replaced to write the record: what decided is not logged
            out.kind = UNREPRODUCIBLE
            out.detail = f"values were replaced to write the record: {', '.join(record['unencodable'][:5])}"
            return out
        try:
            source = self.source(revision)
            result = self.evaluate(revision, input_doc)
        except (LlmAuthzError, OSError, KeyError, ValueError) as exc:
            out.kind, out.detail = UNREPRODUCIBLE, f"revision {revision[:12]} cannot be loaded: {exc}"
            return out
        unsafe = self.unsafe[source.revision]
        masked = reads_masked_input(self.engines[source.revision].projection, record.get("masked") or [])
        if unsafe or masked:
            out.kind = UNREPRODUCIBLE
            out.detail = (f"the policy calls {', '.join(unsafe)}" if unsafe
                          else f"the policy may read masked input {', '.join(masked)}")
            return out
        if _is_error(logged_result) and not _is_error(result):
            out.kind = UNREPRODUCIBLE
            out.detail = f"the live check failed outside the policy: {logged_result['error'][:200]}"
            return out
        out.replayed = _summary(result)
        if self.candidate is None:
            same = _is_error(result) if _is_error(logged_result) else canonical_json(result) == canonical_json(logged_result)
            out.kind = MATCH if same else MISMATCH
            if not same:
                out.replayed = {**out.replayed, "result": result}
                out.logged = {**logged, "result": logged_result}
        else:
            out.kind = SAME if out.replayed == logged else FLIP
        if self.emit and out.kind in (MISMATCH, FLIP):
            expected = logged_result if out.kind == MISMATCH else result
            out.test_case = {"input": input_doc, "expected": expected,
                             "tenants": source.data.get("tenants", {}), "entrypoint": source.entrypoint}
        return out


_WORKER: _Worker | None = None


def _init_worker(audit_dir: str, candidate: Candidate | None, emit: bool) -> None:
    global _WORKER
    _WORKER = _Worker(audit_dir, candidate, emit)


def _run_batch(lines: list[bytes], filters: Filters) -> tuple[int, list[Outcome]]:
    assert _WORKER is not None
    return _WORKER.run(lines, filters)


# ---- the parent side ----------------------------------------------------------------------------

def decision_lines(paths: list[str]) -> Iterator[bytes]:
    """Raw lines of decision records, in log order (several chains merged by time), unparsed."""
    try:
        found = reader.chains(paths)
    except LlmAuthzError as exc:
        raise ReplayInputError(str(exc)) from exc
    return reader.merge_lines([_chain_decision_lines(c.files) for c in found])


def _chain_decision_lines(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        for line in segments.iter_lines(path):
            if _DECISION_MARK in line:
                yield line


def _batches(lines: Iterator[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class RunStats:
    records: int = 0
    skipped: int = 0
    revisions: dict[str, int] = field(default_factory=dict)


def run(paths: list[str], candidate: Candidate | None, filters: Filters, jobs: int, emit: bool,
        on_outcome: Callable[[Outcome], None], progress: Callable[[int], None] | None = None) -> RunStats:
    """Replay every decision record under `paths`, calling on_outcome for each, in log order."""
    audit_dir = reader.audit_dir(paths)
    if audit_dir is None:
        raise ReplayInputError("no audit log given")
    stats = RunStats()

    def collect(skipped: int, outcomes: list[Outcome]) -> None:
        stats.skipped += skipped
        for outcome in outcomes:
            stats.records += 1
            stats.revisions[outcome.revision] = stats.revisions.get(outcome.revision, 0) + 1
            on_outcome(outcome)
        if progress is not None:
            progress(stats.records)

    if jobs <= 1:
        worker = _Worker(str(audit_dir), candidate, emit)
        for batch in _batches(decision_lines(paths)):
            collect(*worker.run(batch, filters))
        return stats
    context = multiprocessing.get_context("spawn")
    # Spawned workers start a fresh Go runtime: give it the collector setting serve uses.
    os.environ.setdefault("GOGC", GOGC_DEFAULT)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(str(audit_dir), candidate, emit)) as pool:
        pending: deque[Future] = deque()
        for batch in _batches(decision_lines(paths)):
            pending.append(pool.submit(_run_batch, batch, filters))
            while len(pending) >= 4 * jobs:
                collect(*pending.popleft().result())
        while pending:
            collect(*pending.popleft().result())
    return stats


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["Candidate", "Filters", "Outcome", "ReplayInputError", "RunStats", "default_jobs", "run"]
