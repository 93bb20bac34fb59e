"""Each row of the contract's status table, through a real Envoy, as the client sees it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ACME_KEY, ACME_READONLY_KEY, FREE_KEY, RESEARCH_KEY

pytestmark = pytest.mark.integration


def error_of(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["decision_id"] == r.headers["x-llm-authz-decision-id"]
    assert err["message"] and err["type"]
    assert r.headers["x-llm-authz-reason"] == code
    return err


def reason_of(r, status: int, code: str) -> None:
    """A denial on a route whose API has its own error shape (tests/integration/test_sdk_errors.py)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and r.json()["error"]
    assert r.headers["x-llm-authz-reason"] == code


def test_allowed_with_x_api_key_as_anthropic_sdks_send_it(stack):
    r = stack.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []},
                   headers={"x-api-key": ACME_KEY})
    assert r.status_code == 200, r.text
    seen = r.json()["received_headers"]
    assert "x-api-key" not in seen and seen["x-llm-authz-tenant"] == "acme"


def test_no_credential_is_401_with_www_authenticate(stack):
    r = stack.chat(None)
    error_of(r, 401, "missing_credential")
    assert r.headers["www-authenticate"] == 'Bearer realm="llm-authz"'


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer sk-llm-not-a-real-key"},
    {"x-api-key": "sk-llm-not-a-real-key"},
    {"authorization": "Basic dXNlcjpwYXNz"},
    {"authorization": "Bearer"},
    {"authorization": f"Bearer {ACME_KEY}", "x-api-key": FREE_KEY},
])
def test_bad_credentials_are_401_without_echoing_them(stack, headers):
    r = stack.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []}, headers=headers)
    error_of(r, 401, "invalid_credential")
    assert r.headers["www-authenticate"].startswith('Bearer realm="llm-authz", error="invalid_token"')
    for value in headers.values():
        secret = value.split()[-1]
        if len(secret) > 8:
            assert secret not in r.text and secret not in r.headers["www-authenticate"]


def test_duplicate_authorization_headers_are_401(stack):
    r = stack.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []},
                   headers=[("authorization", f"Bearer {ACME_KEY}"), ("authorization", f"Bearer {ACME_KEY}")])
    error_of(r, 401, "invalid_credential")


def test_tenant_hint_that_disagrees_is_403(stack):
    r = stack.chat(ACME_KEY, headers={"x-tenant-id": "hobbyist"})
    error_of(r, 403, "tenant_mismatch")
    assert stack.chat(ACME_KEY, headers={"x-tenant-id": "acme"}).status_code == 200


@pytest.mark.parametrize("body, content_type", [
    (b"{not json", "application/json"),
    (b'{"model": "gpt-4o", "model": "gpt-5", "messages": []}', "application/json"),
    (b'{"model": "gpt-4o", "a": ' + b"[" * 200 + b"]" * 200 + b"}", "application/json"),
    (b'{"model": "gpt-4o", "max_tokens": 1e400}', "application/json"),
    (b'{"model": "gpt-4o", "max_tokens": 99999999999999999999999999}', "application/json"),
    (b'{"model": "gpt-\xff"}', "application/json"),
    (b'{"model": "gpt-4o"}', "text/plain"),
    (b'{"messages": []}', "application/json"),
])
def test_malformed_bodies_are_400(stack, body, content_type):
    r = stack.post("/v1/chat/completions", content=body,
                   headers={"authorization": f"Bearer {ACME_KEY}", "content-type": content_type})
    error_of(r, 400, "bad_request")


def test_model_in_path_and_body_disagree_is_400(stack):
    r = stack.post("/v2/models/fraud-scorer/infer", json={"model": "other", "inputs": []},
                   headers={"authorization": f"Bearer {ACME_KEY}"})
    reason_of(r, 400, "bad_request")
    assert r.json() == {"error": "The request is malformed: the model in the path and the model in the body differ."}


def test_body_over_the_tenant_limit_is_413(stack):
    r = stack.chat(FREE_KEY, model="llama-3-8b", messages=[{"role": "user", "content": "a" * 5000}])
    error_of(r, 413, "payload_too_large")


def test_body_cut_short_by_envoy_is_413(stack):
    # Envoy buffers at most 1 MiB for ext_authz; beyond that it sends a partial body.
    big = json.dumps({"model": "llama-3-70b", "messages": [{"role": "user", "content": "a" * 1_100_000}]})
    r = stack.post("/v1/chat/completions", content=big.encode(),
                   headers={"authorization": f"Bearer {RESEARCH_KEY}", "content-type": "application/json"})
    error_of(r, 413, "payload_too_large")


@pytest.mark.parametrize("method, path", [("GET", "/v1/files"), ("POST", "/v1/fine_tuning/jobs"),
                                          ("GET", "/v1/chat/completions"), ("POST", "/admin/reload")])
def test_routes_naming_no_model_operation_are_403(stack, method, path):
    import httpx

    r = httpx.request(method, stack.url + path, headers={"authorization": f"Bearer {ACME_KEY}"},
                      json={} if method == "POST" else None, timeout=10)
    error_of(r, 403, "route_not_allowed")


def test_missing_scope_is_403_naming_the_scope(stack):
    r = stack.chat(ACME_READONLY_KEY)
    err = error_of(r, 403, "insufficient_scope")
    assert "inference:invoke" in err["message"]
    assert 'scope="inference:invoke"' in r.headers["www-authenticate"]


def test_model_not_granted_is_403(stack):
    error_of(stack.chat(FREE_KEY, model="gpt-4o"), 403, "model_not_allowed")


def test_operation_not_granted_is_403(stack):
    r = stack.post("/v1/embeddings", json={"model": "gpt-4o", "input": "x"},
                   headers={"authorization": f"Bearer {ACME_KEY}"})
    error_of(r, 403, "operation_not_allowed")


def test_max_tokens_over_the_limit_is_403(stack):
    error_of(stack.chat(ACME_KEY, max_tokens=5000), 403, "max_tokens_exceeded")
    error_of(stack.chat(ACME_KEY, model="gpt-4o-mini", max_completion_tokens=2049), 403, "max_tokens_exceeded")
    assert stack.chat(ACME_KEY, model="gpt-4o-mini", max_completion_tokens=2048).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/v2/models/fraud-scorer/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
    ("/v2/models/fraud-scorer/versions/7/infer", {"inputs": []}),
    ("/v1/embeddings", {"model": "text-embed-3", "input": "hello"}),
    ("/v1/responses", {"model": "gpt-4o", "input": "hello", "max_output_tokens": 10}),
])
def test_other_route_families_for_acme(stack, path, body):
    r = stack.post(path, json=body, headers={"authorization": f"Bearer {ACME_KEY}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path, body, allowed", [
    ("/v1/models/resnet50:predict", {"instances": [[1, 2]]}, True),
    ("/v1beta/models/gemini-1.5-pro:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}, True),
    ("/v1/messages", {"model": "llama-3-70b", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}, True),
    ("/v1beta/models/gpt-4o:generateContent", {"contents": []}, False),
])
def test_other_route_families_for_research(stack, path, body, allowed):
    r = stack.post(path, json=body, headers={"x-api-key": RESEARCH_KEY})
    assert (r.status_code == 200) is allowed, r.text


def test_gemini_sdks_x_goog_api_key_is_an_api_key(stack):
    r = stack.post("/v1beta/models/gemini-1.5-pro:generateContent", json={"contents": [{"parts": [{"text": "hi"}]}]},
                   headers={"x-goog-api-key": RESEARCH_KEY})
    assert r.status_code == 200, r.text
    assert "x-goog-api-key" not in r.json()["received_headers"]
    r = stack.post("/v1beta/models/gemini-1.5-pro:generateContent", json={"contents": []},
                   headers={"x-goog-api-key": RESEARCH_KEY, "x-api-key": ACME_KEY})
    reason_of(r, 401, "invalid_credential")
    assert r.json()["error"]["status"] == "UNAUTHENTICATED"
