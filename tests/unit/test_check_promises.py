"""The safety promises of one check, each held by a test that fails when the promise is broken.

- A fault anywhere in the pipeline denies with 500 and is recorded (never allows, never raises).
- A record that cannot be written denies with 500, in dry-run too.
- Dry-run allows what the policy denies, tells the upstream, and records the real decision.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

import llm_authz.check as check_module
from llm_authz import metrics
from llm_authz.check import DRY_RUN_HEADER, Checker, CheckSettings
from llm_authz.config import Config
from llm_authz.errors import AuditWriteError
from llm_authz.runtime import load_snapshot
from tests.helpers import check_request, first_answer_fails

REPO = Path(__file__).resolve().parents[2]
ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"


class RecordingSink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class UnwritableSink:
    def __init__(self) -> None:
        self.attempts = 0

    def append(self, record: dict[str, Any]) -> None:
        self.attempts += 1
        raise AuditWriteError("[Errno 28] No space left on device")


@pytest.fixture(scope="module")
def snapshot():
    return load_snapshot(Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants"))


def allowed_chat():
    return check_request(headers={"authorization": f"Bearer {ACME_KEY}"},
                         body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def denied_chat():
    return check_request(headers={"authorization": f"Bearer {ACME_KEY}"},
                         body={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]})


def status_of(response) -> int:
    if response.HasField("denied_response"):
        return response.denied_response.status.code
    assert response.HasField("ok_response")
    return 200


def test_the_allowed_request_used_below_is_allowed(snapshot):
    sink = RecordingSink()
    assert status_of(Checker(snapshot, audit=sink).check(allowed_chat())) == 200
    assert sink.records[0]["allowed"] is True


class Boom(RuntimeError):
    """A fault injected into one step of the pipeline."""


def _raise(*args: Any, **kwargs: Any) -> Any:
    raise Boom("injected fault")


PIPELINE_STEPS = ["from_check_request", "match_route", "extract_payload", "build_input", "from_result",
                  "_fill_context"]


@pytest.mark.parametrize("step", PIPELINE_STEPS)
def test_a_fault_inside_the_pipeline_denies_with_500_and_is_recorded(snapshot, monkeypatch, step):
    monkeypatch.setattr(check_module, step, _raise)
    sink = RecordingSink()
    before = metrics.INTERNAL_ERRORS._value.get()
    response = Checker(snapshot, audit=sink).check(allowed_chat())
    assert status_of(response) == 500
    assert len(sink.records) == 1
    record = sink.records[0]
    assert record["allowed"] is False and record["status"] == 500 and record["reasons"] == ["policy_error"]
    assert record["result"] == {"error": "internal error: Boom"}
    assert metrics.INTERNAL_ERRORS._value.get() == before + 1
    if step == "from_check_request":  # nothing of the request was read: the record says so
        assert (record["request_id"], record["trace_id"], record["input"]) == ("", None, None)


def test_a_fault_in_identity_resolution_denies_with_500(snapshot, monkeypatch):
    monkeypatch.setattr(snapshot.resolver, "resolve", _raise)
    sink = RecordingSink()
    assert status_of(Checker(snapshot, audit=sink).check(allowed_chat())) == 500
    assert sink.records[0]["allowed"] is False


def test_a_fault_in_the_engine_denies_with_500(snapshot, monkeypatch):
    monkeypatch.setattr(snapshot.revision.engine, "evaluate", _raise)
    sink = RecordingSink()
    assert status_of(Checker(snapshot, audit=sink).check(allowed_chat())) == 500
    assert sink.records[0]["status"] == 500


def test_an_unwritable_audit_log_denies_an_allowed_request_with_500(snapshot):
    sink = UnwritableSink()
    before = metrics.AUDIT_ERRORS.labels(kind="write")._value.get()
    response = Checker(snapshot, audit=sink).check(allowed_chat())
    assert sink.attempts == 1
    assert status_of(response) == 500
    assert b'"code":"policy_error"' in response.denied_response.body.encode()
    assert metrics.AUDIT_ERRORS.labels(kind="write")._value.get() == before + 1


def test_dry_run_allows_what_the_policy_denies_and_records_the_real_decision(snapshot):
    sink = RecordingSink()
    response = Checker(snapshot, audit=sink, settings=CheckSettings(dry_run=True)).check(denied_chat())
    assert status_of(response) == 200
    upstream = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert upstream[DRY_RUN_HEADER] == "deny:model_not_allowed"
    record = sink.records[0]
    assert record["dry_run"] is True
    assert record["allowed"] is False and record["status"] == 403 and record["reasons"] == ["model_not_allowed"]


def test_dry_run_leaves_an_allowed_request_alone(snapshot):
    sink = RecordingSink()
    response = Checker(snapshot, audit=sink, settings=CheckSettings(dry_run=True)).check(allowed_chat())
    assert status_of(response) == 200
    assert DRY_RUN_HEADER not in {h.header.key for h in response.ok_response.headers}


def test_dry_run_still_denies_when_the_audit_log_cannot_be_written(snapshot):
    """Dry-run relaxes the policy, not the log: an unrecorded request is never let through."""
    response = Checker(snapshot, audit=UnwritableSink(), settings=CheckSettings(dry_run=True)).check(allowed_chat())
    assert status_of(response) == 500
    response = Checker(snapshot, audit=UnwritableSink(), settings=CheckSettings(dry_run=True)).check(denied_chat())
    assert status_of(response) == 500


def test_a_failing_quota_refund_still_answers_the_deny(snapshot):
    """The refund of a denied request's cost runs after the decision: its failure changes nothing."""
    from llm_authz.quota import LocalQuota

    class BrokenRefund(LocalQuota):
        def refund(self, usage):
            raise RuntimeError("store client bug")

    sink = RecordingSink()
    response = Checker(snapshot, audit=sink, quota=BrokenRefund()).check(denied_chat())
    assert status_of(response) == 403
    assert len(sink.records) == 1 and sink.records[0]["reasons"] == ["model_not_allowed"]


def _count(metric, **labels) -> float:
    return metric.labels(**labels)._value.get() if labels else metric._value.get()


def test_each_check_is_counted_by_result_status_tenant_and_first_reason(snapshot):
    checker = Checker(snapshot, audit=RecordingSink())
    allow, deny = dict(result="allow", status="200", tenant="acme"), dict(result="deny", status="403", tenant="acme")
    before = (_count(metrics.CHECKS, **allow), _count(metrics.CHECKS, **deny),
              _count(metrics.DENIALS, reason="model_not_allowed", tenant="acme"),
              metrics.DECISION_SECONDS._sum.get(), _count(metrics.CHECKS, result="deny", status="401", tenant="none"))
    checker.check(allowed_chat())
    checker.check(denied_chat())
    checker.check(check_request(headers={"x-api-key": "sk-llm-unknown-0000000000"}, body={"model": "gpt-4o"}))
    after = (_count(metrics.CHECKS, **allow), _count(metrics.CHECKS, **deny),
             _count(metrics.DENIALS, reason="model_not_allowed", tenant="acme"),
             metrics.DECISION_SECONDS._sum.get(), _count(metrics.CHECKS, result="deny", status="401", tenant="none"))
    assert [a - b for a, b in zip(after, before)][:3] == [1, 1, 1] and after[4] == before[4] + 1
    assert after[3] > before[3]  # three decision times observed


def test_a_record_names_its_decision_request_trace_policy_and_outcome(snapshot):
    sink = RecordingSink()
    trace = "0af7651916cd43dd8448eb211c80319c"
    request = check_request(headers={"authorization": f"Bearer {ACME_KEY}", "traceparent": f"00-{trace}-b7ad6b7169203331-01"},
                            body={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, request_id="req-77")
    checker = Checker(snapshot, audit=sink)
    observed = metrics.DECISION_SECONDS._sum.get()
    started = time.perf_counter()
    response = checker.check(request)
    elapsed_us = (time.perf_counter() - started) * 1e6
    assert 0 < metrics.DECISION_SECONDS._sum.get() - observed <= elapsed_us / 1e6
    record = sink.records[0]
    decision_id = {h.header.key: h.header.value for h in response.denied_response.headers}["x-llm-authz-decision-id"]
    assert (record["decision_id"], record["request_id"], record["trace_id"]) == (decision_id, "req-77", trace)
    assert record["policy"] == {"revision": snapshot.revision.id, "entrypoint": snapshot.revision.source.entrypoint}
    assert record["engine"] == snapshot.revision.engine.name
    assert (record["allowed"], record["status"], record["reasons"]) == (False, 403, ["model_not_allowed"])
    assert (record["tenant"], record["subject"], record["model"], record["dry_run"]) == ("acme", "ak_acme_1", "gpt-5", False)
    assert isinstance(record["latency_us"], int) and 0 < record["latency_us"] <= elapsed_us
    assert record["time"] == record["input"]["request"]["time"]


def test_a_check_past_its_deadline_denies_with_500_and_says_so_in_the_record(snapshot):

    sink = RecordingSink()
    response = Checker(snapshot, audit=sink).check(allowed_chat(), deadline=time.monotonic() - 1)
    assert status_of(response) == 500
    assert sink.records[0]["result"] == {"error": "check deadline exceeded"}
    assert sink.records[0]["reasons"] == ["policy_error"] and sink.records[0]["allowed"] is False
    assert status_of(Checker(snapshot, audit=sink).check(allowed_chat(), deadline=time.monotonic() + 30)) == 200


def test_a_policy_error_denies_with_500_keeps_its_text_and_is_counted_by_kind(snapshot, monkeypatch):
    from llm_authz.errors import PolicyError

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise PolicyError("policy.rego:7: var x is unsafe")

    monkeypatch.setattr(snapshot.revision.engine, "evaluate", fails)
    sink = RecordingSink()
    before = (metrics.ENGINE_ERRORS.labels(kind="PolicyError")._value.get(), metrics.INTERNAL_ERRORS._value.get())
    response = Checker(snapshot, audit=sink).check(allowed_chat())
    assert status_of(response) == 500
    assert sink.records[0]["result"] == {"error": "policy.rego:7: var x is unsafe"}
    assert sink.records[0]["reasons"] == ["policy_error"]
    assert (metrics.ENGINE_ERRORS.labels(kind="PolicyError")._value.get(), metrics.INTERNAL_ERRORS._value.get()) == (
        before[0] + 1, before[1])


FREE_KEY = "sk-llm-hobbyist-demo-93a1d7c2e05b4f18"


def _denial(snapshot, request) -> tuple[int, str]:
    import orjson

    response = Checker(snapshot, audit=None).check(request)
    return response.denied_response.status.code, orjson.loads(response.denied_response.body)["error"]["message"]


def _chat(key: str, **body: Any):
    return check_request(headers={"authorization": f"Bearer {key}"},
                         body={"messages": [{"role": "user", "content": "hi"}], **body})


@pytest.mark.parametrize("make, status, message", [
    (lambda: _chat(ACME_KEY, model="gpt-4o", max_tokens=5000), 403, "max_tokens 5000 is above this tenant's limit of 4096."),
    (lambda: _chat(ACME_KEY, model="gpt-4o-mini", max_tokens=3000), 403,
     "max_tokens 3000 is above this tenant's limit of 2048."),  # the model's own limit
    (lambda: _chat(ACME_KEY, model="text-embed-3"), 403,
     "The operation 'chat' is not allowed on model 'text-embed-3' for this tenant."),
    (lambda: _chat(FREE_KEY, model="llama-3-8b", pad="x" * 5000), 413,
     "The request body is larger than this tenant's limit of 4096 bytes, or was cut short."),
    (lambda: check_request(headers={"authorization": f"Bearer {ACME_KEY}"}, body=b'{"model": "gpt-4o", "x": [1,}'), 400,
     "The request is malformed: invalid JSON: Expecting value: line 1 column 29 (char 28)."),
    (lambda: check_request(path="/v1/models", method="GET", principal="spiffe://research.example/ns/ml/sa/batch-eval"),
     403, "The credential lacks the required scope(s): models:read."),
])
def test_a_denial_tells_the_client_the_limit_model_or_scope_it_ran_into(snapshot, make, status, message):
    assert _denial(snapshot, make()) == (status, message)


def test_envoy_metadata_of_an_allowed_check_names_tenant_tier_and_model(snapshot):
    response = Checker(snapshot, audit=None).check(allowed_chat())
    meta = dict(response.dynamic_metadata)
    assert (meta["tenant"], meta["tier"], meta["model"], meta["allowed"]) == ("acme", "premium", "gpt-4o", True)


def test_every_check_gets_its_own_decision_id():
    import uuid

    snapshot = load_snapshot(Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants"))
    sink = RecordingSink()
    checker = Checker(snapshot, audit=sink)
    checker.check(allowed_chat())
    checker.check(allowed_chat())
    first, second = (r["decision_id"] for r in sink.records)
    assert first != second and str(uuid.UUID(first)) == first


def test_an_anonymous_body_is_read_up_to_64_kib_and_not_past_it(snapshot):
    def anonymous(size: int) -> dict:
        sink = RecordingSink()
        body = b'{"model": "gpt-4o", "pad": "' + b"x" * (size - 30) + b'"}'
        assert len(body) == size
        Checker(snapshot, audit=sink).check(check_request(body=body))
        return sink.records[0]["input"]["payload"]

    assert anonymous(64 * 1024)["error"] is None
    unread = anonymous(64 * 1024 + 1)
    assert (unread["error"], unread["error_detail"]) == ("body_not_read",
                                                         "the body of an unauthenticated request is not read")


def test_the_configured_json_depth_is_the_one_enforced(snapshot):
    body = b'{"model": "gpt-4o", "messages": [], "x": ' + b"[" * 10 + b"]" * 10 + b', "y": [[],[],[],[],[],[],[],[]]}'
    response = Checker(snapshot, audit=None, settings=CheckSettings(max_json_depth=8)).check(
        check_request(headers={"authorization": f"Bearer {ACME_KEY}"}, body=body))
    assert response.denied_response.status.code == 400
    assert "JSON nested deeper than 8" in response.denied_response.body


def test_the_request_id_is_envoys_x_request_id_else_its_stream_id(snapshot):
    sink = RecordingSink()
    checker = Checker(snapshot, audit=sink)
    request = allowed_chat()
    request.attributes.request.http.id = "stream-7"
    request.attributes.request.http.headers["x-request-id"] = "envoy-xrid-7"
    checker.check(request)
    del request.attributes.request.http.headers["x-request-id"]
    checker.check(request)
    assert [r["request_id"] for r in sink.records] == ["envoy-xrid-7", "stream-7"]


def test_a_listing_shared_by_several_apis_is_answered_in_the_callers_api(snapshot):
    import orjson

    response = Checker(snapshot, audit=None).check(
        check_request(path="/v1/models", method="GET", headers={"anthropic-version": "2023-06-01"}))
    body = orjson.loads(response.denied_response.body)
    assert response.denied_response.status.code == 401 and body["type"] == "error"  # Anthropic's envelope
    assert body["error"]["type"] == "authentication_error"


def test_a_denied_request_on_a_route_is_answered_in_that_routes_api(snapshot):
    """Gemini's v1 path reads like TF Serving's (`/v1/models/<name>:<verb>`) when no route is known;
    the matched route decides: the client gets google.rpc.Status, not a bare string."""
    import orjson

    request = check_request(path="/v1/models/gemini-1.5-pro:generateContent",
                            body={"contents": [{"parts": [{"text": "hi"}]}]})
    response = Checker(snapshot, audit=RecordingSink()).check(request)
    assert status_of(response) == 401
    error = orjson.loads(response.denied_response.body)["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")


def test_a_check_with_time_left_waits_for_a_rotated_in_key(tmp_path):
    """A token signed by a key the IdP has just published: the check refetches the key set and waits
    for it within the deadline Envoy's timeout gives the check (10 s here), past the half second a
    check without a deadline would wait; the IdP takes a second to answer."""
    import shutil

    from llm_authz.config import JwksSettings
    from llm_authz.identity.jwks import JwksRegistry
    from tests.conftest import REPO
    from tests.identity_fixtures import ISSUER, JwksServer, claims, jwks_of, new_key

    server = JwksServer().start()
    registry = JwksRegistry(JwksSettings(fetch_timeout_seconds=5))
    try:
        old, rotated = new_key("ES256", kid="old"), new_key("ES256", kid="rotated")
        ep = server.serve("/jwks", old)
        shutil.copytree(REPO / "tenants", tmp_path / "tenants")
        acme = tmp_path / "tenants" / "acme.yaml"
        text = acme.read_text().replace("jwks_file: keys/acme.jwks.json", f'jwks_url: "{server.url("/jwks")}"')
        acme.write_text(text.replace("https://idp.acme.example", ISSUER))
        snapshot = load_snapshot(Config(tenants=tmp_path / "tenants", policies=REPO / "policies" / "rego"), registry)
        ep.body, ep.delay = jwks_of(old, rotated), 1.0
        request = check_request(headers={"authorization": f"Bearer {rotated.sign(claims())}"},
                                body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        assert status_of(Checker(snapshot, audit=RecordingSink()).check(request, deadline=time.monotonic() + 10)) == 200
        snapshot.revision.close()
    finally:
        registry.close()
        server.stop()


def _failure_log(caplog) -> tuple[str, str, dict]:
    """The one warning-or-worse line the check logged: its level, text and the ids it carries."""
    lines = [r for r in caplog.records if r.name == "llm_authz.check" and r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0]
    ids = {"decision_id": line.decision_id, "request_id": line.request_id, "trace_id": line.trace_id}
    return line.levelname, line.getMessage(), ids


def _traced_chat():
    request = allowed_chat()
    request.attributes.request.http.headers["x-request-id"] = "req-7"
    request.attributes.request.http.headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    return request


@pytest.mark.parametrize("fault, level, text", [
    ("policy", "WARNING", "policy error, denying: policy.rego:7: var x is unsafe"),
    ("bug", "ERROR", "unexpected error on the check path, denying"),
    ("audit", "ERROR", "audit log unwritable, denying: [Errno 28] No space left on device"),
    ("response", "ERROR", "the decision could not be turned into a CheckResponse, denying"),
])
def test_each_failure_is_logged_once_with_the_checks_ids(snapshot, monkeypatch, caplog, fault, level, text):
    """The operator finds the failed check's record (and Envoy's access log line, and the trace)
    from the log line alone."""
    from llm_authz.errors import PolicyError

    def policy_fails(*args: Any, **kwargs: Any) -> Any:
        raise PolicyError("policy.rego:7: var x is unsafe")

    sink: Any = UnwritableSink() if fault == "audit" else RecordingSink()
    if fault == "policy":
        monkeypatch.setattr(snapshot.revision.engine, "evaluate", policy_fails)
    elif fault == "bug":
        monkeypatch.setattr(check_module, "build_input", _raise)
    elif fault == "response":
        first_answer_fails(monkeypatch)
    caplog.set_level(logging.INFO, logger="llm_authz.check")
    response = Checker(snapshot, audit=sink).check(_traced_chat())
    assert status_of(response) == 500
    logged_level, message, ids = _failure_log(caplog)
    assert (logged_level, message) == (level, text)
    answered = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert ids == {"decision_id": answered["x-llm-authz-decision-id"], "request_id": "req-7",
                   "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}


def test_a_malformed_body_from_an_unknown_caller_on_a_model_route_is_401_not_400(snapshot):
    """On a model route the policy answers a body error itself: identity comes first."""
    request = check_request(body=b'{"model": "gpt-4o", "messages": [', headers={"content-type": "application/json"})
    assert status_of(Checker(snapshot, audit=None).check(request)) == 401


def test_an_authenticated_body_over_the_anonymous_limit_is_read(snapshot):
    sink = RecordingSink()
    checker = Checker(snapshot, audit=sink, settings=CheckSettings(unauthenticated_body_bytes=16))
    assert status_of(checker.check(allowed_chat())) == 200
    assert sink.records[0]["input"]["payload"]["parsed"] is True
    anonymous = check_request(body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert status_of(checker.check(anonymous)) == 401
    assert sink.records[1]["input"]["payload"]["error"] == "body_not_read"


def test_without_signals_the_input_has_none_and_a_tracker_needs_the_tenants_consent(snapshot):
    from llm_authz.signals.tracker import SignalTracker

    for tracker in (None, SignalTracker()):  # acme's tenant file has no `signals:` section
        sink = RecordingSink()
        checker = Checker(snapshot, audit=sink, signals=tracker)
        assert status_of(checker.check(allowed_chat())) == 200
        assert status_of(checker.check(check_request(body={"model": "gpt-4o", "messages": []}))) == 401
        assert [r["input"]["signals"] for r in sink.records] == [None, None]
