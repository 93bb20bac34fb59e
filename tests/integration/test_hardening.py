"""Attacks through a real Envoy in front of `llm-authz serve`: each one is denied, and each answer is logged."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from llm_authz.audit import reader
from tests.conftest import ACME_KEY, RESEARCH_KEY, start_stack
from tests.helpers import check_request

pytestmark = pytest.mark.integration
ACME = {"authorization": f"Bearer {ACME_KEY}", "content-type": "application/json"}
RESEARCH = {"authorization": f"Bearer {RESEARCH_KEY}"}


def _code(r: httpx.Response) -> str | None:
    """The reason of a denial, whatever the route family's error shape (it is in this header for all)."""
    return r.headers.get("x-llm-authz-reason")


def _records(stack) -> dict[str, dict]:
    return {r["decision_id"]: r for r in reader.iter_records([stack.audit_dir], skip_partial_tail=True)}


# 1. several fields for one fact

@pytest.mark.parametrize("extra", [
    {"max_tokens": 10, "max_completion_tokens": 100000},
    {"max_tokens": 0, "max_completion_tokens": 100000},
    {"max_tokens": 10000, "n": 5},
    {"max_tokens": 10000, "best_of": 5},
])
def test_the_largest_output_limit_is_the_one_checked(stack, extra):
    # (research has no token quota: a denied request spending quota is another matter)
    r = stack.chat(RESEARCH_KEY, model="llama-3-70b", **extra)
    assert r.status_code == 403 and _code(r) == "max_tokens_exceeded"


def test_gemini_config_in_both_spellings_is_read_whole(stack):
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 10},
            "generation_config": {"max_output_tokens": 100000}}
    r = stack.post("/v1beta/models/gemini-1.5-pro:generateContent", json=body, headers=RESEARCH)
    assert r.status_code == 403 and _code(r) == "max_tokens_exceeded"


# 2. one key, two spellings

@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o","Model":"gpt-5","messages":[]}',
    b'{"model":"gpt-4o","max_tokens":10,"MAX_TOKENS":100000,"messages":[]}',
])
def test_case_variant_keys_are_refused(stack, raw):
    r = stack.post("/v1/chat/completions", content=raw, headers={**RESEARCH, "content-type": "application/json"})
    assert r.status_code == 400 and "duplicate JSON key" in r.json()["error"]["message"]


def test_a_lone_case_variant_key_counts(stack):
    r = stack.post("/v1/chat/completions", content=b'{"model":"llama-3-70b","Max_Tokens":100000,"messages":[]}',
                   headers={**RESEARCH, "content-type": "application/json"})
    assert r.status_code == 403 and _code(r) == "max_tokens_exceeded"


@pytest.mark.parametrize("second", [
    b'Content-Disposition: form-data; name="model"\r\n\r\nbig-model',
    b"Content-Disposition: form-data; name=\"x\"; name*=utf-8''model\r\n\r\nbig-model",
])
def test_a_form_naming_the_model_twice_is_refused(stack, second):
    body = (b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--B\r\n' + second
            + b'\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n--B--\r\n')
    r = stack.post("/v1/audio/transcriptions", content=body,
                   headers={**RESEARCH, "content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 400, r.text


# 3. a body cut short on a route that names the model in the path

@pytest.mark.parametrize("spoof", [{}, {"x-envoy-auth-partial-body": "false"}])
def test_a_chunked_body_cut_short_is_413_even_with_the_model_in_the_path(stack, spoof):
    head = b'{"contents":[{"parts":[{"text":"' + b"a" * (1100 * 1024) + b'"}]}],'
    tail = b'"generationConfig":{"maxOutputTokens":100000}}'

    def chunks():  # no content-length: Envoy buffers 1 MiB and flags the rest as cut
        for i in range(0, len(head), 64 * 1024):
            yield head[i:i + 64 * 1024]
        yield tail

    r = httpx.post(stack.url + "/v1beta/models/gemini-1.5-pro:generateContent", content=chunks(),
                   headers={**RESEARCH, "content-type": "application/json", **spoof}, timeout=30)
    assert r.status_code == 413 and _code(r) == "payload_too_large", (r.status_code, r.text[:300])


# 4. path parts other than the model

@pytest.mark.parametrize("path", ["/v2/models/fraud-scorer/versions/%2e%2e%2f/infer",
                                  "/v2/models/fraud-scorer/versions/..%2f..%2fadmin/infer"])
def test_an_encoded_traversal_in_a_version_is_refused(stack, path):
    r = stack.post(path, json={"inputs": []}, headers=ACME)
    assert r.status_code == 403 and _code(r) == "route_not_allowed"


# 5. every answer has its record

@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o","max_tokens":99999999999999999999,"messages":[]}',
    b'{"model":"gpt-4o\\ud800","messages":[]}',
    b'{"model":"gpt-4o","messages":[{"role":"\\ud800","content":"x"}]}',
])
@pytest.mark.parametrize("key", [ACME_KEY, None])
def test_values_no_log_can_hold_are_answered_and_logged_once(stack, raw, key):
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    r = stack.post("/v1/chat/completions", content=raw, headers=headers)
    assert r.status_code == (400 if key else 401), r.text
    decision_id = r.headers["x-llm-authz-decision-id"]
    deadline = time.monotonic() + 5
    while decision_id not in (records := _records(stack)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert records[decision_id]["status"] == r.status_code
    result = subprocess.run([sys.executable, "-m", "llm_authz", "audit", "verify", str(stack.audit_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# 7. identity headers spoofed with underscores

def test_envoy_refuses_header_names_with_underscores(stack):
    r = stack.chat(ACME_KEY, headers={"x_llm_authz_tenant": "research"})
    assert r.status_code == 400


@pytest.fixture(scope="module")
def lax_envoy(tmp_path_factory):
    """An Envoy configured without the underscore rule: llm-authz must strip the headers itself."""
    def allow_underscores(config):
        for listener in config["static_resources"]["listeners"]:
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["common_http_protocol_options"] = {"headers_with_underscores_action": "ALLOW"}

    running, stop_all = start_stack(tmp_path_factory.mktemp("lax"), envoy_edit=allow_underscores)
    yield running
    stop_all()


def test_headers_folding_to_reserved_names_never_reach_the_upstream(lax_envoy):
    r = lax_envoy.chat(ACME_KEY, headers={"x_llm_authz_tenant": "research", "X_LLM_AUTHZ_SUBJECT": "root",
                                         "x_api_key": "sk-not-for-upstream"})
    assert r.status_code == 200, r.text
    seen = r.json()["received_headers"]
    assert seen["x-llm-authz-tenant"] == "acme"
    assert not [k for k in seen if "_" in k and k.replace("_", "-").startswith(("x-llm-authz-", "x-api-key"))]


# 8. no work before authentication

def test_an_anonymous_form_with_thousands_of_parts_is_a_quick_401(stack):
    form = b"".join(b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nxxxxxxxxxxxxxxxxxxxxx\r\n'
                    for _ in range(12000)) + b"--b--\r\n"
    assert len(form) > 600_000
    r = stack.post("/v1/audio/transcriptions", content=form,
                   headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 401 and _code(r) == "missing_credential"


def test_an_authenticated_form_with_thousands_of_parts_is_refused(stack):
    form = b"".join(b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n' for _ in range(12000)) + b"--b--\r\n"
    r = stack.post("/v1/audio/transcriptions", content=form,
                   headers={**RESEARCH, "content-type": "multipart/form-data; boundary=b"})
    assert r.status_code in (400, 413) and _code(r) in ("bad_request", "payload_too_large")


# 9. smaller

def test_a_non_ascii_content_length_over_grpc_is_answered(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.authz_port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        req = check_request(headers={"authorization": f"Bearer {RESEARCH_KEY}", "content-length": "\u00b2"},
                            body={"model": "llama-3-70b", "messages": []}, source="127.0.0.1")
        resp = stub.Check(req, timeout=5)
    assert resp.HasField("ok_response"), resp
