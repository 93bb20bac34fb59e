"""Hostile requests through the whole check: one record each, no spoofed identity, no work for strangers."""

from __future__ import annotations

from pathlib import Path

import pytest

import llm_authz.check as check_module
from llm_authz.audit.encodable import make_encodable
from llm_authz.audit.reader import iter_records
from llm_authz.audit.verify import verify
from llm_authz.audit.writer import AuditLog
from llm_authz.check import Checker
from llm_authz.config import Config
from llm_authz.decision import Decision
from llm_authz.engine.embedded import EmbeddedEngine
from llm_authz.errors import PolicyError, PolicyLoadError
from llm_authz.response import CheckContext, to_check_response
from llm_authz.runtime import load_snapshot
from tests.helpers import check_request

REPO = Path(__file__).resolve().parents[2]
ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"
AUTH = {"authorization": f"Bearer {ACME_KEY}"}


def _status(response) -> int:
    return 200 if response.HasField("ok_response") else response.denied_response.status.code


@pytest.fixture
def logged(tmp_path):
    """A Checker writing a real audit log; yields (check, records)."""
    def make(policies: Path = REPO / "policies" / "rego"):
        snapshot = load_snapshot(Config(policies=policies, tenants=REPO / "tenants"))
        log = AuditLog(tmp_path / "audit", durability="buffered")
        log.archive_revision(snapshot.revision.source)
        made.append(log)
        return Checker(snapshot, audit=log)

    made: list[AuditLog] = []

    def records():
        for log in made:
            log.close()
        return list(iter_records([tmp_path / "audit"]))

    yield make, records
    for log in made:
        log.close()


@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o","max_tokens":123456789012345678901234,"messages":[]}',
    b'{"model":"gpt-4o","max_tokens":18446744073709551616,"messages":[]}',
    b'{"model":"gpt-4o\\ud800","messages":[]}',
    b'{"model":"gpt-4o","messages":[{"role":"\\ud800","content":"x"}]}',
    b'{"model":"gpt-4o","messages":[],"tools":[{"type":"function","function":{"name":"\\udfff"}}]}',
])
def test_values_no_log_can_hold_are_a_400_with_exactly_one_record(logged, raw):
    make, records = logged
    check = make()
    response = check.check(check_request(headers=AUTH, body=raw))
    assert _status(response) == 400
    got = records()
    answered = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert len(got) == 1 and got[0]["decision_id"] == answered["x-llm-authz-decision-id"]
    assert got[0]["status"] == 400 and not got[0]["allowed"]
    assert verify([check.audit.directory]).ok


def test_a_record_the_log_refuses_is_replaced_by_an_encodable_copy_never_dropped(logged, tmp_path):
    # A policy result can hold what JSON cannot (here an integer beyond 64 bits).
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "p.rego").write_text(
        "package llm.authz\nimport rego.v1\ndecision := {\"allow\": true, \"n\": 123456789012345678901234567890}\n")
    make, records = logged
    check = make(tmp_path / "p")
    from llm_authz import metrics

    internal, refused = metrics.INTERNAL_ERRORS._value.get(), metrics.AUDIT_ERRORS.labels(kind="unencodable")._value.get()
    response = check.check(check_request(headers=AUTH, body={"model": "gpt-4o", "messages": []}))
    assert _status(response) == 500
    got = records()
    assert len(got) == 1
    assert got[0]["status"] == 500 and got[0]["allowed"] is False and got[0]["reasons"] == ["policy_error"]
    assert metrics.AUDIT_ERRORS.labels(kind="unencodable")._value.get() == refused + 1
    assert metrics.INTERNAL_ERRORS._value.get() == internal  # answered as planned, not by the last-resort path
    assert got[0]["unencodable"] == ["/result/n"]
    assert got[0]["result"]["n"] == "123456789012345678901234567890"
    assert verify([check.audit.directory]).ok
    # replay says it cannot reproduce that record, rather than reporting a mismatch
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "llm_authz", "replay", str(check.audit.directory), "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert not report["mismatches"], report
    assert "values were replaced" in out.stdout


def test_make_encodable_names_every_replaced_value():
    record = {"a": "x\ud800", "b": [1, 2**70, float("nan")], "\udc00": {1, 2}, "ok": "fine"}
    safe = make_encodable(record)
    assert safe["a"] == "x\ufffd" and safe["b"][1] == str(2**70) and safe["ok"] == "fine"
    assert sorted(safe["unencodable"]) == sorted(["/a", "/b/1", "/b/2", "/\udc00", "/\ufffd"])


def test_the_fallback_answer_cannot_be_broken_by_the_request(monkeypatch):
    snapshot = load_snapshot(Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants"))
    real = check_module.to_check_response

    def fails_on_request_values(decision, ctx):  # fault injection: any ctx holding request values breaks
        if ctx.request_headers or ctx.model:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real(decision, ctx)

    monkeypatch.setattr(check_module, "to_check_response", fails_on_request_values)
    response = Checker(snapshot, audit=None).check(check_request(headers=AUTH, body={"model": "gpt-5"}))
    assert _status(response) == 500


# ---- spoofed identity headers ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x_llm_authz_tenant", "X_LLM_AUTHZ_SUBJECT", "x-llm_authz-decision-id",
                                  "x_llm_authz_anything"])
def test_every_client_header_that_folds_to_a_reserved_name_is_removed(name):
    decision = Decision(allow=True)
    ctx = CheckContext(decision_id="d", request_headers={name: "research", "x-ok": "1"}, tenant="acme")
    ok = to_check_response(decision, ctx).ok_response
    assert name in ok.headers_to_remove and "x-ok" not in ok.headers_to_remove


@pytest.mark.parametrize("name", ["x_api_key", "X_Goog_Api_Key", "proxy_authorization"])
def test_credentials_under_folded_names_are_removed_and_never_shown(name, logged):
    make, records = logged
    check = make()
    secret = "sk-some-other-credential-value"
    response = check.check(check_request(headers={**AUTH, name: secret}, body={"model": "gpt-4o", "messages": []}))
    assert name.lower() in response.ok_response.headers_to_remove
    assert secret not in str(records())


def test_a_folded_service_header_is_not_in_the_policy_input(logged):
    make, records = logged
    check = make()
    check.check(check_request(headers={**AUTH, "x_llm_authz_tenant": "research"},
                              body={"model": "gpt-4o", "messages": []}))
    assert "x_llm_authz_tenant" not in records()[0]["input"]["request"]["headers"]


# ---- no work before authentication -------------------------------------------------------------

def test_a_large_body_from_an_unknown_caller_is_not_parsed(logged, monkeypatch):
    calls = []
    real = check_module.extract_payload
    monkeypatch.setattr(check_module, "extract_payload", lambda *a, **k: calls.append(1) or real(*a, **k))
    make, records = logged
    check = make()
    form = b"".join(b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n' for _ in range(12000)) + b"--b--\r\n"
    response = check.check(check_request(path="/v1/audio/transcriptions", body=form,
                                         headers={"content-type": "multipart/form-data; boundary=b"}))
    assert _status(response) == 401 and calls == []
    assert records()[0]["input"]["payload"]["error"] == "body_not_read"


def test_a_small_body_from_an_unknown_caller_is_still_described():
    snapshot = load_snapshot(Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants"))
    records = []

    class Sink:
        def append(self, record):
            records.append(record)

    Checker(snapshot, audit=Sink()).check(check_request(body={"model": "gpt-4o", "messages": []}))
    assert records[0]["input"]["payload"]["error"] is None and records[0]["model"] == "gpt-4o"


# ---- the engine: values JSON cannot hold are policy errors -------------------------------------

@pytest.mark.parametrize("value", [{1, 2}, {"a": {3}}, b"bytes", object()])
def test_a_value_json_cannot_hold_is_a_policy_error_not_a_type_error(value):
    engine = EmbeddedEngine({"p.rego": "package p\nimport rego.v1\nx := input.v\n"}, {})
    try:
        with pytest.raises(PolicyError):
            engine.evaluate("data.p.x", {"v": value})
    finally:
        engine.close()


@pytest.mark.parametrize("data", [{"d": {1}}, {"d": float("nan")}])
def test_data_json_cannot_hold_is_a_load_error(data):
    with pytest.raises(PolicyLoadError):
        EmbeddedEngine({"p.rego": "package p\nimport rego.v1\nx := data.d\n"}, data)


def test_integers_beyond_64_bits_stay_exact_in_input_and_data():
    big = 123456789012345678901234567890
    engine = EmbeddedEngine({"p.rego": "package p\nimport rego.v1\nx := input.v + data.d\n"}, {"d": big})
    try:
        assert engine.evaluate("data.p.x", {"v": big}) == 2 * big
    finally:
        engine.close()


def test_policy_eval_keeps_integers_beyond_64_bits_exact(tmp_path):
    import subprocess
    import sys

    (tmp_path / "p.rego").write_text("package p\nimport rego.v1\nx := input.v + 1\ny := data.d\n")
    (tmp_path / "d.json").write_text('{"d": 98765432109876543210987654321}')
    (tmp_path / "in.json").write_text('{"v": 123456789012345678901234567890}')
    out = subprocess.run([sys.executable, "-m", "llm_authz", "policy", "eval", "-d", str(tmp_path / "p.rego"),
                          "-d", str(tmp_path / "d.json"), "-i", str(tmp_path / "in.json"), "data.p"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"x": 123456789012345678901234567891' in out.stdout
    assert '"y": 98765432109876543210987654321' in out.stdout


def test_a_builtin_errors_operands_are_withheld_from_logs_and_records():
    from llm_authz.check import loggable_error

    message = "1 error occurred: policy.rego:3: eval_builtin_error: regex.match: error parsing regexp: missing ): (secret prompt"
    assert loggable_error(message) == ("1 error occurred: policy.rego:3: eval_builtin_error: regex.match: "
                                       "(details withheld: they may quote the input)")
    assert loggable_error("x" * 5000) == "x" * 1000
