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
