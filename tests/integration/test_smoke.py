"""The walking path through a real Envoy: one allow, one deny."""

import pytest

from tests.conftest import ACME_KEY

pytestmark = pytest.mark.integration


def test_allowed_chat_reaches_the_model_server_with_identity_headers(stack):
    r = stack.chat(ACME_KEY, headers={"x-llm-authz-tenant": "spoofed"})
    assert r.status_code == 200, r.text
    seen = r.json()["received_headers"]
    assert seen["x-llm-authz-tenant"] == "acme"
    assert seen["x-llm-authz-subject"] == "ak_acme_1"
    assert "authorization" not in seen
    assert r.headers["x-llm-authz-decision-id"] == seen["x-llm-authz-decision-id"]


def test_model_not_granted_is_403_with_openai_error(stack):
    r = stack.chat(ACME_KEY, model="gpt-5")
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "model_not_allowed"
    assert err["decision_id"] == r.headers["x-llm-authz-decision-id"]
