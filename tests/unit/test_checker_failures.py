"""Faults inside the check pipeline end in a deny, never in a gRPC error or an allow."""

from pathlib import Path

import llm_authz.check as check_module
from llm_authz.check import Checker
from llm_authz.config import Config
from llm_authz.runtime import load_snapshot
from tests.helpers import check_request

REPO = Path(__file__).resolve().parents[2]
ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"


def test_a_fault_while_building_the_response_denies_with_500(monkeypatch):
    snapshot = load_snapshot(Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants"))
    real = check_module.to_check_response
    calls = []

    def failing_once(decision, ctx):  # fault injection: the first mapping (the allow) fails
        calls.append(decision.allow)
        if len(calls) == 1:
            raise ValueError("injected fault")
        return real(decision, ctx)

    monkeypatch.setattr(check_module, "to_check_response", failing_once)
    request = check_request(headers={"authorization": f"Bearer {ACME_KEY}"},
                            body={"model": "gpt-4o", "messages": []})
    response = Checker(snapshot, audit=None).check(request)
    assert calls == [True, False]
    assert response.HasField("denied_response") and response.denied_response.status.code == 500


def test_a_builtin_error_on_prompt_text_keeps_the_prompt_out_of_logs_and_records(tmp_path, caplog):
    (tmp_path / "p.rego").write_text(
        "package llm.authz\nimport rego.v1\n"
        "decision := {\"allow\": net.cidr_contains(\"10.0.0.0/8\", input.parsed_body.messages[0].content)}\n")
    snapshot = load_snapshot(Config(policies=tmp_path, tenants=REPO / "tenants"))
    records = []

    class Sink:
        def append(self, record):
            records.append(record)

    prompt = "my confidential question about the merger"
    request = check_request(headers={"authorization": f"Bearer {ACME_KEY}"},
                            body={"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]})
    response = Checker(snapshot, audit=Sink()).check(request)
    assert response.denied_response.status.code == 500
    assert "net.cidr_contains" in records[0]["result"]["error"]
    assert prompt not in str(records) and prompt not in caplog.text


def test_a_log_line_of_a_check_names_its_decision_id_and_trace_id(tmp_path, caplog):
    (tmp_path / "p.rego").write_text("package llm.authz\nimport rego.v1\ndecision := 1 / 0\n")
    snapshot = load_snapshot(Config(policies=tmp_path, tenants=REPO / "tenants"))
    records = []

    class Sink:
        def append(self, record):
            records.append(record)

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    request = check_request(headers={"authorization": f"Bearer {ACME_KEY}",
                                     "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
                            body={"model": "gpt-4o", "messages": []})
    Checker(snapshot, audit=Sink()).check(request)
    assert records[0]["status"] == 500 and records[0]["trace_id"] == trace
    lines = [r for r in caplog.records if r.name == "llm_authz.check"]
    assert lines and lines[0].decision_id == records[0]["decision_id"] and lines[0].trace_id == trace
    assert lines[0].request_id == "req-1" == records[0]["request_id"]
