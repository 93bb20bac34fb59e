"""The official SDKs, pointed at a real Envoy: each raises its own typed error for a denial, with
the body its API shapes, and each lists the models for a key with `models:read`."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.conftest import ACME_KEY, ACME_READONLY_KEY, REPO, RESEARCH_KEY, Stack, start_stack

pytestmark = pytest.mark.integration

BAD_KEY = "sk-llm-not-a-real-key-0000000000"
# acme's max_body_bytes is 65536: a prompt this long is a 413.
LONG_PROMPT = "a" * 70_000
ACME_MODELS = ["fraud-scorer", "gpt-4o", "gpt-4o-mini", "text-embed-3"]
SPENT_KEY = "sk-llm-spent-test-5b0d2f7e91c34a68"
# A tenant granted every model the tests call, with a request quota of 0: its every request is a 429.
SPENT_TENANT = f"""
id: spent
tier: free
models:
  gpt-4o: {{operations: [chat]}}
  gemini-1.5-pro: {{operations: [generate]}}
limits: {{requests_per_minute: 0}}
credentials:
  api_keys:
    - {{id: ak_spent, sha256: "{hashlib.sha256(SPENT_KEY.encode()).hexdigest()}", scopes: [inference:invoke]}}
"""


@pytest.fixture(scope="module")
def sdk_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The example tenants and the tenant whose quota is spent."""
    tmp = tmp_path_factory.mktemp("sdk")
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    (tmp / "tenants" / "spent.yaml").write_text(SPENT_TENANT)
    running, stop_all = start_stack(tmp)
    yield running
    stop_all()


def openai_client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=stack.url + "/v1", max_retries=0)


def anthropic_client(stack: Stack, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=stack.url, max_retries=0)


def gemini_client(stack: Stack, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=genai_types.HttpOptions(
        base_url=stack.url, api_version="v1beta", retry_options=genai_types.HttpRetryOptions(attempts=1)))


def decision_of(exc: Exception) -> tuple[str, str]:
    headers = exc.response.headers  # type: ignore[attr-defined]
    return headers["x-llm-authz-reason"], headers["x-llm-authz-decision-id"]


# ---- OpenAI ---------------------------------------------------------------------------------------

def openai_chat(stack: Stack, key: str, model: str = "gpt-4o", prompt: str = "hi", **kw):
    return openai_client(stack, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **kw)


@pytest.mark.parametrize("call, error, status, reason, kind", [
    (lambda s: openai_chat(s, BAD_KEY), openai.AuthenticationError, 401, "invalid_credential", "authentication_error"),
    (lambda s: openai_chat(s, ACME_KEY, model="gpt-5"), openai.PermissionDeniedError, 403, "model_not_allowed",
     "permission_error"),
    (lambda s: openai_chat(s, ACME_KEY, prompt=LONG_PROMPT), openai.APIStatusError, 413, "payload_too_large",
     "invalid_request_error"),
    (lambda s: openai_chat(s, SPENT_KEY), openai.RateLimitError, 429, "rate_limited",
     "rate_limit_error"),
    (lambda s: openai_chat(s, ACME_KEY, max_tokens=-1), openai.BadRequestError, 400, "bad_request",
     "invalid_request_error"),
], ids=["401", "403", "413", "429", "400"])
def test_openai_sdk_raises_its_typed_error_with_openais_body(sdk_stack, call, error, status, reason, kind):
    with pytest.raises(error) as caught:
        call(sdk_stack)
    exc = caught.value
    _, decision_id = decision_of(exc)
    assert exc.status_code == status and exc.code == reason and exc.type == kind and exc.param is None
    assert exc.body == {"type": kind, "code": reason, "message": exc.body["message"], "param": None,
                        "decision_id": decision_id}
    assert decision_of(exc) == (reason, decision_id)


def test_openai_sdk_lists_and_reads_the_tenants_models(sdk_stack):
    for key in (ACME_KEY, ACME_READONLY_KEY):
        client = openai_client(sdk_stack, key)
        assert [m.id for m in client.models.list()] == ACME_MODELS
        assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.PermissionDeniedError) as caught:
        openai_client(sdk_stack, ACME_KEY).models.retrieve("gpt-5")
    assert caught.value.code == "model_not_allowed"


def test_openai_sdk_read_only_key_lists_but_cannot_run(sdk_stack):
    with pytest.raises(openai.PermissionDeniedError) as caught:
        openai_chat(sdk_stack, ACME_READONLY_KEY)
    assert caught.value.code == "insufficient_scope"


# ---- Anthropic ------------------------------------------------------------------------------------

def anthropic_message(stack: Stack, key: str, model: str = "gpt-4o", prompt: str = "hi", max_tokens: int = 64):
    return anthropic_client(stack, key).messages.create(
        model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": prompt}])


@pytest.mark.parametrize("call, error, status, reason, kind", [
    (lambda s: anthropic_message(s, BAD_KEY), anthropic.AuthenticationError, 401, "invalid_credential",
     "authentication_error"),
    (lambda s: anthropic_message(s, ACME_KEY, model="claude-opus-4"), anthropic.PermissionDeniedError, 403,
     "model_not_allowed", "permission_error"),
    (lambda s: anthropic_message(s, ACME_KEY, prompt=LONG_PROMPT), anthropic.RequestTooLargeError, 413,
     "payload_too_large", "request_too_large"),
    (lambda s: anthropic_message(s, SPENT_KEY), anthropic.RateLimitError, 429, "rate_limited",
     "rate_limit_error"),
    (lambda s: anthropic_message(s, ACME_KEY, max_tokens=-1), anthropic.BadRequestError, 400, "bad_request",
     "invalid_request_error"),
], ids=["401", "403", "413", "429", "400"])
def test_anthropic_sdk_raises_its_typed_error_with_anthropics_envelope(sdk_stack, call, error, status, reason, kind):
    with pytest.raises(error) as caught:
        call(sdk_stack)
    exc = caught.value
    _, decision_id = decision_of(exc)
    assert exc.status_code == status and exc.type == kind and exc.error_code == reason
    assert exc.body == {"type": "error", "request_id": decision_id,
                        "error": {"type": kind, "message": exc.api_message,
                                  "details": {"error_code": reason, "decision_id": decision_id}}}
    assert decision_of(exc) == (reason, decision_id)


def test_anthropic_sdk_lists_the_tenants_models(sdk_stack):
    client = anthropic_client(sdk_stack, ACME_READONLY_KEY)
    assert [m.id for m in client.models.list()] == ACME_MODELS
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        anthropic_client(sdk_stack, ACME_READONLY_KEY).models.retrieve("claude-opus-4")
    assert caught.value.error_code == "model_not_allowed"


# ---- Gemini ---------------------------------------------------------------------------------------

def gemini_generate(stack: Stack, key: str, model: str = "gemini-1.5-pro", prompt: str = "hi", **config):
    client = gemini_client(stack, key)  # kept in a name: the client closes its connections when collected
    return client.models.generate_content(
        model=model, contents=prompt, config=genai_types.GenerateContentConfig(**config) if config else None)


@pytest.mark.parametrize("call, status, reason, google_status", [
    (lambda s: gemini_generate(s, BAD_KEY), 401, "invalid_credential", "UNAUTHENTICATED"),
    (lambda s: gemini_generate(s, ACME_KEY), 403, "model_not_allowed", "PERMISSION_DENIED"),
    (lambda s: gemini_generate(s, ACME_KEY, prompt=LONG_PROMPT), 413, "payload_too_large", "INVALID_ARGUMENT"),
    (lambda s: gemini_generate(s, SPENT_KEY), 429, "rate_limited", "RESOURCE_EXHAUSTED"),
    (lambda s: gemini_generate(s, RESEARCH_KEY, max_output_tokens=-1), 400, "bad_request", "INVALID_ARGUMENT"),
], ids=["401", "403", "413", "429", "400"])
def test_gemini_sdk_raises_client_error_with_googles_status(sdk_stack, call, status, reason, google_status):
    with pytest.raises(genai_errors.ClientError) as caught:
        call(sdk_stack)
    exc = caught.value
    _, decision_id = decision_of(exc)
    assert exc.code == status and exc.status == google_status
    assert exc.details == {"error": {
        "code": status, "message": exc.message, "status": google_status,
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason.upper(),
                     "domain": "llm-authz", "metadata": {"reason": reason, "decisionId": decision_id}}]}}
    assert decision_of(exc) == (reason, decision_id)


def test_gemini_sdk_lists_the_tenants_models(sdk_stack):
    client = gemini_client(sdk_stack, RESEARCH_KEY)
    names = [m.name for m in client.models.list()]
    assert names == ["models/gemini-1.5-pro", "models/llama-3-70b", "models/resnet50", "models/whisper-1"]
    assert client.models.get(model="gemini-1.5-pro").name == "models/gemini-1.5-pro"
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.get(model="gemini-2.0-flash")
    assert caught.value.status == "PERMISSION_DENIED"


# ---- KServe v2 and TF Serving: {"error": "..."} ---------------------------------------------------

def get(stack: Stack, path: str, key: str | None) -> httpx.Response:
    return httpx.get(stack.url + path, headers={"authorization": f"Bearer {key}"} if key else {}, timeout=10)


def test_kserve_metadata_and_health_need_models_read(sdk_stack):
    meta = get(sdk_stack, "/v2/models/fraud-scorer", ACME_READONLY_KEY)
    assert meta.status_code == 200 and meta.json()["name"] == "fraud-scorer"
    for path in ("/v2/models/fraud-scorer/ready", "/v2/health/ready", "/v2/health/live", "/v2"):
        assert get(sdk_stack, path, ACME_READONLY_KEY).status_code == 200, path
    denied = get(sdk_stack, "/v2/models/resnet50", ACME_READONLY_KEY)
    assert denied.status_code == 403
    assert denied.json() == {"error": "The model 'resnet50' is not available to this tenant."}
    assert denied.headers["x-llm-authz-reason"] == "model_not_allowed"
    assert get(sdk_stack, "/v2/health/ready", None).json() == {
        "error": "No credential was presented: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."}


def test_kserve_and_tf_serving_inference_denials_are_a_string_error(sdk_stack):
    headers = {"authorization": f"Bearer {ACME_KEY}"}
    r = httpx.post(sdk_stack.url + "/v2/models/resnet50/infer", json={"inputs": []}, headers=headers, timeout=10)
    assert r.status_code == 403 and r.json() == {"error": "The model 'resnet50' is not available to this tenant."}
    r = httpx.post(sdk_stack.url + "/v1/models/resnet50:predict", json={"instances": [[1]]}, headers=headers,
                   timeout=10)
    assert r.status_code == 403 and r.json() == {"error": "The model 'resnet50' is not available to this tenant."}
    meta = get(sdk_stack, "/v1/models/resnet50/metadata", RESEARCH_KEY)
    assert meta.status_code == 200 and meta.json()["model_spec"]["name"] == "resnet50"


# ---- the README's example prints what the README says ---------------------------------------------

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_readme_shows_each_sdks_denial_as_it_prints(sdk_stack, tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Errors each SDK understands"):]
    code, printed = re.findall(r"```(?:python)?\n(.*?)```", section, re.DOTALL)[:2]
    script = tmp_path / "readme_example.py"
    script.write_text(code.replace("http://127.0.0.1:10000", sdk_stack.url))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert UUID.sub("<id>", out) == UUID.sub("<id>", printed)
