"""Decision records as OPA decision-log events, for pipelines that already ingest OPA's logs.

The event has OPA's field names (decision_id, path, input, result, timestamp, labels, bundles,
masked, metrics, req_id); what OPA has no field for (seq, allowed, status, reasons, tenant,
model, the record's hash) goes under `custom`, which OPA's own events carry for the same purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from llm_authz import __version__
from llm_authz.audit.chain import DECISION
from llm_authz.audit.compact import full_input
from llm_authz.audit.reader import PathLike, chains, iter_entries

BUNDLE_NAME = "llm-authz"


def query_path(entrypoint: str) -> str:
    """data.llm.authz.decision → llm/authz/decision (OPA's `path`)."""
    ref = entrypoint.removeprefix("data.").removeprefix("data")
    return ref.replace(".", "/").strip("/")


def opa_event(record: dict[str, Any], labels: dict[str, str] | None = None,
              chain_name: str | None = None) -> dict[str, Any]:
    """One decision record as an OPA decision-log event (`chain_name`, when given, under custom)."""
    policy = record.get("policy") or {}
    revision = policy.get("revision", "")
    event: dict[str, Any] = {
        "labels": {"id": "llm-authz", "version": __version__, "engine": str(record.get("engine", "")),
                   **(labels or {})},
        "decision_id": record.get("decision_id"),
        "path": query_path(str(policy.get("entrypoint", ""))),
        "input": full_input(record),  # OPA's event has the input as the policy saw it
        "result": record.get("result"),
        "bundles": {BUNDLE_NAME: {"revision": revision}},
        "timestamp": record.get("time"),
        "masked": list(record.get("masked") or []),
        "metrics": {"timer_server_handler_ns": int(record.get("latency_us") or 0) * 1000},
        "req_id": record.get("seq"),
        "custom": {k: record.get(k) for k in ("seq", "request_id", "allowed", "status", "reasons", "tenant",
                                               "subject", "model", "dry_run", "hash")},
    }
    if record.get("trace_id"):
        event["trace_id"] = record["trace_id"]  # OPA's field for the W3C trace the decision belongs to
    if chain_name is not None:
        event["custom"]["chain"] = chain_name  # seq counts per chain in a log of several
    result = record.get("result")
    if isinstance(result, dict) and set(result) == {"error"}:
        event["error"] = {"code": "llm_authz_error", "message": str(result["error"])}
    return event


def opa_events(paths: Iterable[PathLike], labels: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Every decision record of the log, in order (chains merged by time), as an OPA event (streaming)."""
    paths = list(paths)
    several = len(chains(paths)) > 1
    for entry in iter_entries(paths, kinds=(DECISION,)):
        yield opa_event(entry.record, labels, entry.chain if several else None)
