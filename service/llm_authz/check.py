"""The pipeline for one Check: CheckRequest → facts → identity → input → decision → response + audit record."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.service.auth.v3 import external_auth_pb2

from llm_authz import metrics
from llm_authz.audit.encodable import make_encodable
from llm_authz.audit.compact import record_fields
from llm_authz.audit.redaction import redact_input, scrub_credentials
from llm_authz.audit.writer import utc_now
from llm_authz.decision import Decision, from_result, unread_body_denied
from llm_authz.errors import AuditEncodeError, AuditWriteError, PolicyError, QuotaUnavailable
from llm_authz.facts.payload import PayloadFacts, extract_payload, unread_payload
from llm_authz.facts.request import from_check_request
from llm_authz.facts.routes import READ_OPERATIONS, READ_SCOPE, api_family, match_route
from llm_authz.identity.resolve import IdentityResolver
from llm_authz.input import build_input
from llm_authz.policy import Revision
from llm_authz.quota import QuotaCounter, QuotaUsage, plan
from llm_authz.response import CheckContext, to_check_response
from llm_authz.signals import Observation, SignalTracker, credential_id
from llm_authz.tracing import trace_id as traceparent_trace_id

log = logging.getLogger("llm_authz.check")
DRY_RUN_HEADER = "x-llm-authz-dry-run"


class AuditSink(Protocol):
    def append(self, record: dict[str, Any]) -> None:
        """Make the record durable, or raise AuditWriteError."""


@dataclass(frozen=True)
class Snapshot:
    """Everything one check reads that a reload replaces: swapped whole, read once per check."""

    revision: Revision
    resolver: IdentityResolver


@dataclass
class CheckSettings:
    max_json_depth: int = 64
    # An unauthenticated caller's body is parsed only up to this size: know who is calling
    # before doing work for them. (The policy answers 401 either way.)
    unauthenticated_body_bytes: int = 64 * 1024
    dry_run: bool = False
    audit_masks: tuple[str, ...] = ()
    # Hand the policy the raw credential headers (OPA-Envoy's behaviour); the audit log redacts them anyway.
    raw_credentials: bool = False


class Checker:
    def __init__(self, snapshot: Snapshot, audit: AuditSink | None, settings: CheckSettings | None = None,
                 quota: QuotaCounter | None = None, signals: SignalTracker | None = None):
        self.snapshot = snapshot
        self.audit = audit
        self.settings = settings or CheckSettings()
        self.quota = quota
        self.signals = signals

    def check(self, request: external_auth_pb2.CheckRequest, deadline: float | None = None) -> external_auth_pb2.CheckResponse:
        """Answer one CheckRequest. Never raises: every failure is a deny (500 policy_error)."""
        started = time.perf_counter()
        snap = self.snapshot
        revision = snap.revision
        decision_id = str(uuid.uuid4())
        ctx = CheckContext(decision_id=decision_id, request_headers={})
        doc: dict[str, Any] | None = None
        result: Any = None
        request_id = ""
        trace_id: str | None = None
        logged = {"decision_id": decision_id}  # what every log line of this check carries
        usage: QuotaUsage | None = None
        observation: Observation | None = None
        try:
            facts = from_check_request(request)
            # Envoy's x-request-id (what its access log and the upstream see), not its internal stream id.
            request_id = facts.headers.get("x-request-id") or facts.id
            ctx.request_headers = facts.headers
            trace_id = traceparent_trace_id(facts.headers)
            logged |= {"request_id": request_id, "trace_id": trace_id}
            route = match_route(facts.method, facts.path, facts.headers)
            ctx.family = api_family(route, facts.path, facts.headers)
            identity = snap.resolver.resolve(facts, deadline)
            payload = self._payload(facts, route, identity.authenticated)
            tenant = revision.tenants.get(identity.tenant) if identity.tenant else None
            if self.quota is not None and tenant is not None and identity.authenticated:
                usage = self._reserve(tenant.tenant, identity, route, payload, facts)
                ctx.retry_after_seconds = usage.retry_after_seconds()
                ctx.ratelimit_headers = usage.headers()
            signals = None
            if self.signals is not None and tenant is not None and tenant.tenant.signals is not None:
                observation = self._observe(tenant.tenant.id, identity, route, payload, facts)
                signals = self.signals.signals(observation) if observation is not None else None
            doc = build_input(facts, route, payload, identity, tenant, usage, self.settings.raw_credentials,
                              signals=signals)
            _fill_context(ctx, doc, tenant)
            result = revision.engine.evaluate(revision.source.entrypoint, doc)
            decision = unread_body_denied(from_result(result), route, payload)
        except PolicyError as exc:
            metrics.ENGINE_ERRORS.labels(kind=type(exc).__name__).inc()
            detail = loggable_error(str(exc))
            log.warning("policy error, denying: %s", detail, extra=logged)
            decision = Decision.policy_error()
            result = {"error": detail}
        except Exception as exc:  # a bug must deny, not crash or allow
            metrics.INTERNAL_ERRORS.inc()
            log.exception("unexpected error on the check path, denying", extra=logged)
            decision = Decision.policy_error()
            result = {"error": f"internal error: {type(exc).__name__}"}
        if deadline is not None and time.monotonic() > deadline:
            decision = Decision.policy_error()
            result = {"error": "check deadline exceeded"}
        latency_us = int((time.perf_counter() - started) * 1e6)

        recorded = True
        if self.audit is not None:
            record = _record(decision_id, request_id, revision, doc, result, decision, ctx, latency_us,
                             self.settings, trace_id)
            try:
                try:
                    self.audit.append(record)
                except AuditEncodeError:
                    decision, record = _unencodable(record)
                    self.audit.append(record)
            except AuditWriteError as exc:
                metrics.AUDIT_ERRORS.labels(kind="write").inc()
                log.error("audit log unwritable, denying: %s", exc, extra=logged)
                decision = Decision.policy_error()
                recorded = False
        if usage is not None and usage.reserved and not decision.allow:
            self._refund(usage)
            usage = None
        enforced = decision
        if self.settings.dry_run and not decision.allow and recorded:
            # Dry-run answers allow and tells the upstream what the policy would have done. It
            # relaxes the policy, not the log: a check whose record could not be written denies.
            decision = Decision(allow=True, headers={DRY_RUN_HEADER: f"deny:{decision.code}"})
        try:
            response = to_check_response(decision, ctx)
        except Exception:  # e.g. policy headers Envoy's protos cannot carry: deny, never a gRPC error
            metrics.INTERNAL_ERRORS.inc()
            log.exception("the decision could not be turned into a CheckResponse, denying", extra=logged)
            decision = Decision.policy_error()
            # Nothing from the request in it: whatever broke the first answer cannot break this one.
            ctx = CheckContext(decision_id=decision_id, request_headers={})
            response = to_check_response(decision, ctx)
            if usage is not None and usage.reserved:
                self._refund(usage)
            enforced = decision
        if observation is not None:
            self._learn(observation, enforced)
        tenant_known = bool(doc and doc["tenant"]["known"])
        tenant_label = metrics.tenant_label(ctx.tenant, tenant_known)
        metrics.CHECKS.labels(result="allow" if decision.allow else "deny", status=str(decision.status),
                              tenant=tenant_label).inc()
        if not decision.allow:
            metrics.DENIALS.labels(reason=metrics.reason_label(decision.code), tenant=tenant_label).inc()
        metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        return response

    def _payload(self, facts: Any, route: Any, authenticated: bool) -> PayloadFacts:
        if not authenticated and len(facts.body) > self.settings.unauthenticated_body_bytes:
            return unread_payload(facts, "the body of an unauthenticated request is not read")
        return extract_payload(facts, route, self.settings.max_json_depth)

    def _reserve(self, tenant: Any, identity: Any, route: Any, payload: Any, facts: Any) -> QuotaUsage:
        """Take this request's cost from its tenant, credential and model buckets (given back if denied)."""
        assert self.quota is not None
        model = route.model if route and route.model is not None else payload.model
        key_id = identity.key_id if identity.method == "api_key" else None
        specs, costs = plan(tenant, key_id, model, payload.estimated_tokens)
        return self.quota.reserve(specs, costs, facts.time.timestamp())

    def _observe(self, tenant: str, identity: Any, route: Any, payload: Any, facts: Any) -> Observation | None:
        """This request as the signal tracker sees it; None for a caller with no stable credential name."""
        assert self.signals is not None
        credential = credential_id(identity) if identity.authenticated else None
        if credential is None:
            return None
        model = route.model if route and route.model is not None else payload.model
        return self.signals.observation(tenant, credential, facts.source_address, payload.estimated_tokens,
                                        payload.bytes, model, route.operation if route else None,
                                        facts.time.timestamp())

    def _learn(self, observation: Observation, decision: Decision) -> None:
        """Teach the tracker this request and count the anomalies the policy named. Never fails the check."""
        assert self.signals is not None
        try:
            self.signals.record(observation, decision.allow)
            action = "deny" if not decision.allow else "flag" if decision.flags else "observe"
            for kind in decision.anomalies:
                metrics.ANOMALIES.labels(tenant=observation.tenant, kind=metrics.anomaly_label(kind),
                                         action=action).inc()
        except Exception:
            metrics.INTERNAL_ERRORS.inc()
            log.exception("could not record the request's signals")

    def _refund(self, usage: QuotaUsage) -> None:
        """A denied request spends nothing. If the store fails here the cost stays spent (fail closed)."""
        assert self.quota is not None
        try:
            self.quota.refund(usage)
        except QuotaUnavailable as exc:
            metrics.INTERNAL_ERRORS.inc()
            log.warning("could not give back the quota of a denied request: %s", exc)
        except Exception:  # a bug in the store's client must not turn the answered deny into an RPC error
            metrics.INTERNAL_ERRORS.inc()
            log.exception("could not give back the quota of a denied request")


def _unencodable(record: dict[str, Any]) -> tuple[Decision, dict[str, Any]]:
    """The log refused the record for a value JSON cannot hold (the body parser refuses such values,
    so it came from elsewhere: a policy result, say). Deny 500 and write a copy with each such value
    replaced and listed under `unencodable`: the check still has exactly one record."""
    metrics.AUDIT_ERRORS.labels(kind="unencodable").inc()
    denied = Decision.policy_error()
    safe = make_encodable(record)
    log.error("a decision record held values JSON cannot hold at %s; denying and logging a copy",
              ", ".join(safe["unencodable"][:10]))
    safe.update({"allowed": False, "status": 500, "reasons": ["policy_error"]})
    return denied, safe


_BUILTIN_ERROR = re.compile(r"(eval_builtin_error: [\w.]+): .*", re.DOTALL)


def loggable_error(message: str) -> str:
    """An engine error as logs and audit records keep it. A builtin error's text can quote its
    operands, and an operand can be prompt text: keep where and which builtin, drop the rest
    (replaying the logged input with `llm-authz policy eval` shows it in full)."""
    return _BUILTIN_ERROR.sub(r"\1: (details withheld: they may quote the input)", message)[:1000]


def _fill_context(ctx: CheckContext, doc: dict[str, Any], tenant: Any) -> None:
    identity = doc["identity"]
    ctx.tenant = identity["tenant"]
    ctx.subject = identity["subject"]
    ctx.tier = doc["tenant"]["tier"]
    ctx.model = doc["model"]["name"]
    ctx.operation = doc["model"]["operation"]
    ctx.identity_error = identity["error_description"]
    ctx.payload_error = doc["payload"]["error_detail"]
    ctx.max_tokens = doc["payload"]["max_tokens"]
    if tenant is not None:
        t = tenant.tenant
        required = (READ_SCOPE,) if ctx.operation in READ_OPERATIONS else t.scopes_required
        ctx.missing_scopes = tuple(s for s in required if s not in identity["scopes"])
        ctx.max_body_bytes = t.limits.max_body_bytes
        grant = t.models.get(ctx.model or "")
        ctx.max_tokens_limit = grant.max_tokens if grant and grant.max_tokens is not None else t.limits.max_tokens


def _record(decision_id: str, request_id: str, revision: Revision, doc: dict[str, Any] | None, result: Any,
            decision: Decision, ctx: CheckContext, latency_us: int,
            settings: CheckSettings, trace_id: str | None = None) -> dict[str, Any]:
    """The audit record of one check, before the log adds seq and hashes. No prompt, no credential."""
    logged_input, masked = (redact_input(doc, settings.audit_masks, settings.raw_credentials)
                            if doc is not None else (None, []))
    if settings.raw_credentials and doc is not None:
        result = scrub_credentials(result, doc)
    return {
        "time": doc["request"]["time"] if doc else utc_now(),
        "decision_id": decision_id,
        "request_id": request_id,
        "trace_id": trace_id,
        "policy": {"revision": revision.id, "entrypoint": revision.source.entrypoint},
        "engine": revision.engine.name,
        **record_fields(logged_input),  # the input without OPA-Envoy's copies (audit/compact.py)
        "masked": masked,
        "result": result,
        "allowed": decision.allow,
        "status": decision.status,
        "reasons": decision.reasons,
        "tenant": ctx.tenant,
        "subject": ctx.subject,
        "model": ctx.model,
        "latency_us": latency_us,
        "dry_run": settings.dry_run,
    }
