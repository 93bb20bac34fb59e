"""Prometheus metrics, served on their own port. Labels are bounded: tenant ids come from tenant files."""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram, start_http_server

CHECKS = Counter("llm_authz_checks_total", "Checks answered, by result, HTTP status and tenant",
                 ["result", "status", "tenant"])
DECISION_SECONDS = Histogram(
    "llm_authz_decision_seconds", "Time from CheckRequest received to CheckResponse ready",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
ENGINE_ERRORS = Counter("llm_authz_engine_errors_total", "Policy evaluations that failed", ["kind"])
AUDIT_ERRORS = Counter("llm_authz_audit_errors_total", "Decision records that could not be written", ["kind"])
AUDIT_RECORDS = Counter("llm_authz_audit_records_total", "Audit records made durable, by kind", ["kind"])
AUDIT_COMMIT_SECONDS = Histogram(
    "llm_authz_audit_commit_seconds", "Time to write (and fsync) one group-commit batch of audit records",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0),
)
AUDIT_BATCH_RECORDS = Histogram("llm_authz_audit_batch_records", "Audit records per group-commit batch",
                                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024))
AUDIT_DISK_BYTES = Gauge("llm_authz_audit_disk_bytes",
                         "Bytes of audit segment files in the audit directory (every chain), plain or compressed",
                         ["form"], multiprocess_mode="livemax")
AUDIT_COMPRESSED_IN_BYTES = Counter("llm_authz_audit_compressed_input_bytes_total",
                                    "Plain bytes of the audit segments this process compressed")
AUDIT_COMPRESSED_OUT_BYTES = Counter("llm_authz_audit_compressed_output_bytes_total",
                                     "Compressed bytes written for them (ratio: input / output)")
AUDIT_OLDEST_RECORD = Gauge("llm_authz_audit_oldest_record_timestamp_seconds",
                            "When the oldest audit record still kept was written (Unix time)",
                            multiprocess_mode="livemin")
AUDIT_PRUNED_SEGMENTS = Counter("llm_authz_audit_pruned_segments_total", "Audit segments removed by retention",
                                ["reason"])
AUDIT_MAINTENANCE_ERRORS = Counter("llm_authz_audit_maintenance_errors_total",
                                   "Failed audit compression or retention passes (tried again later)", ["kind"])
AUDIT_FS_SIZE_BYTES = Gauge("llm_authz_audit_filesystem_size_bytes", "Size of the filesystem holding the audit log",
                            multiprocess_mode="livemax")
AUDIT_FS_FREE_BYTES = Gauge("llm_authz_audit_filesystem_free_bytes",
                            "Bytes free (for llm-authz) on the filesystem holding the audit log",
                            multiprocess_mode="livemin")
INTERNAL_ERRORS = Counter("llm_authz_internal_errors_total", "Unexpected errors on the check path (each denied)")
DENIALS = Counter("llm_authz_denials_total", "Denied checks, by first reason (the deny's error code) and tenant",
                  ["reason", "tenant"])
POLICY_RELOADS = Counter("llm_authz_policy_reloads_total",
                         "Policy and tenant reloads (signal, file watch or bundle), by outcome", ["outcome"])
TLS_RELOADS = Counter("llm_authz_tls_reloads_total", "Changes of the gRPC port's TLS files taken up or refused",
                      ["outcome"])
# With several processes (serve --processes N) the gauges below show the largest value of a live process.
POLICY_INFO = Gauge("llm_authz_policy_revision_info", "The revision in force (value 1)", ["revision"],
                    multiprocess_mode="livemax")
TENANTS_LOADED = Gauge("llm_authz_tenants_loaded", "Tenant files loaded", multiprocess_mode="livemax")
JWKS_FETCHES = Counter("llm_authz_jwks_fetches_total", "JWKS fetches from identity providers, by outcome and reason",
                       ["outcome", "reason"])
JWKS_REFETCHES_SUPPRESSED = Counter(
    "llm_authz_jwks_refetches_suppressed_total",
    "Unknown-kid refetches not made because one was made within the interval")

ANOMALIES = Counter("llm_authz_credential_anomalies_total",
                    "Requests the policy found anomalous for their credential, by tenant, kind and action (deny|flag|observe)",
                    ["tenant", "kind", "action"])
ANOMALY_KINDS = frozenset({"impossible_travel", "concurrent_networks", "countries", "baseline"})


def anomaly_label(kind: str) -> str:
    """Kinds come from the policy: a kind of one's own is counted as `other` (labels stay bounded)."""
    return kind if kind in ANOMALY_KINDS else "other"


_REASON_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def reason_label(code: str | None) -> str:
    """The first reason of a deny as a label value: a policy's own codes, but never free text."""
    return code if code and _REASON_LABEL.match(code) else "other"


def initialise() -> None:
    """Create the series that alerts and dashboards read, at zero, before the first event: an
    alert on `rate(llm_authz_audit_errors_total[5m]) > 0` must see 0, not "no data"."""
    from llm_authz.decision import POLICY_DENIED, REASON_TABLE
    from llm_authz.errors import EngineUnavailable, PolicyError, QuotaUnavailable

    CHECKS.labels(result="allow", status="200", tenant="none")
    CHECKS.labels(result="deny", status="500", tenant="none")
    for reason in [r for r, _ in REASON_TABLE] + [POLICY_DENIED]:
        DENIALS.labels(reason=reason, tenant="none")
    for kind in (PolicyError, EngineUnavailable, QuotaUnavailable):
        ENGINE_ERRORS.labels(kind=kind.__name__)
    AUDIT_ERRORS.labels(kind="write")
    for outcome in ("ok", "error"):
        POLICY_RELOADS.labels(outcome=outcome)
        TLS_RELOADS.labels(outcome=outcome)
    for kind in ("decision", "checkpoint", "revision"):
        AUDIT_RECORDS.labels(kind=kind)
    for kind in ("internal", "compress", "retention"):
        AUDIT_MAINTENANCE_ERRORS.labels(kind=kind)
    for reason in ("age", "size"):
        AUDIT_PRUNED_SEGMENTS.labels(reason=reason)
    for form in ("plain", "compressed"):
        AUDIT_DISK_BYTES.labels(form=form)
    for outcome in ("ok", "error"):
        for reason in ("initial", "refresh", "unknown_kid"):
            JWKS_FETCHES.labels(outcome=outcome, reason=reason)
    for outcome in ("ok", "not_modified", "error"):
        BUNDLE_DOWNLOADS.labels(outcome=outcome)
    for reason in ("connection", "timeout", "http_4xx", "http_5xx", "internal"):
        DECISION_LOG_FAILURES.labels(reason=reason)
    for kind in sorted(ANOMALY_KINDS | {"other"}):
        for action in ("deny", "flag", "observe"):
            ANOMALIES.labels(tenant="none", kind=kind, action=action)


def tenant_label(tenant: str | None, known: bool) -> str:
    """A client cannot create label values: only tenants that have a file are named."""
    return tenant if (tenant and known) else "none"


def serve_metrics(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1")

# OPA bundles (serve --bundle).
BUNDLE_DOWNLOADS = Counter("llm_authz_bundle_downloads_total",
                           "Bundle downloads from --bundle URL, by outcome (ok, not_modified, error)", ["outcome"])
BUNDLE_REVISION = Gauge("llm_authz_bundle_revision_info",
                        "The revision (from .manifest) of the bundle in force (value 1)", ["revision"],
                        multiprocess_mode="livemax")
BUNDLE_LOADED_AT = Gauge("llm_authz_bundle_last_activation_timestamp_seconds",
                         "When the bundle in force was put in force (Unix time)", multiprocess_mode="livemax")

# The decision-log shipper (serve --decision-log-url).
DECISION_LOG_EVENTS = Counter("llm_authz_decision_log_events_total", "Decision events delivered to the collector")
DECISION_LOG_BATCHES = Counter("llm_authz_decision_log_batches_total", "Batches the collector accepted")
DECISION_LOG_FAILURES = Counter("llm_authz_decision_log_failures_total",
                                "Batch deliveries that failed (each is retried), by reason", ["reason"])
DECISION_LOG_LAG = Gauge("llm_authz_decision_log_lag_seconds",
                         "Age of the oldest decision record not yet delivered (0 when caught up)",
                         multiprocess_mode="livemax")
DECISION_LOG_PENDING = Gauge("llm_authz_decision_log_pending_records",
                             "Decision records read from the audit log and not yet delivered",
                             multiprocess_mode="livesum")
DECISION_LOG_LAST_SUCCESS = Gauge("llm_authz_decision_log_last_success_timestamp_seconds",
                                  "When the collector last accepted a batch (Unix time)",
                                  multiprocess_mode="livemax")
