"""Properties of the whole check over hostile requests (hypothesis).

For arbitrary methods, paths, headers, bodies, content types and encodings — invalid UTF-8, lone
surrogates, huge and tiny numbers, deep nesting, duplicate and case-variant keys, cut-short
bodies, odd forms — the check:
- never raises and never fails the RPC: every request gets an allow or a deny with a known status;
- writes exactly one audit record per answer, with the decision id the answer carries, and the
  log verifies afterwards;
- never resolves an ambiguity in the caller's favour: an allowed request has no case-variant or
  duplicate keys, was not cut short, and no spelling of any output-token field (times n/best_of)
  goes beyond the tenant's limit for the model every spelling of `model` names.

`make test` runs a bounded number of examples; `make fuzz` runs the same properties long
(FUZZ_EXAMPLES, default 20000: about 6 CPU-minutes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llm_authz.audit.reader import iter_records
from llm_authz.audit.verify import verify
from llm_authz.audit.writer import AuditLog
from llm_authz.check import Checker
from llm_authz.config import Config
from llm_authz.runtime import load_snapshot
from tests.helpers import check_request

REPO = Path(__file__).resolve().parents[2]
KEYS = {"acme": "sk-llm-acme-demo-6f1c0e2a9b7d4e58", "research": "sk-llm-research-demo-0d4b8e6f1a2c7395",
        "hobbyist": "sk-llm-hobbyist-demo-93a1d7c2e05b4f18", "readonly": "sk-llm-acme-readonly-2c7e91d04b3a5f66"}
FUZZ = os.environ.get("LLM_AUTHZ_FUZZ") == "1"
EXAMPLES = int(os.environ.get("LLM_AUTHZ_FUZZ_EXAMPLES", "20000")) if FUZZ else 300
STATUSES = {200, 400, 401, 403, 413, 429, 500}

settings.register_profile("check", max_examples=EXAMPLES, deadline=None, derandomize=not FUZZ,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much])


# ---- JSON with duplicate keys, escapes and odd numbers: a tree of (key, value) pairs -----------

@dataclass(frozen=True)
class Obj:
    pairs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is (a number beyond 64 bits, a lone surrogate escape...)."""

    text: str


FIELD_NAMES = ["model", "Model", "MODEL", "max_tokens", "Max_Tokens", "max_completion_tokens",
               "max_output_tokens", "maxOutputTokens", "max_new_tokens", "n", "best_of", "N", "stream",
               "messages", "contents", "generationConfig", "generation_config", "parameters", "candidateCount",
               "role", "content", "tools", "name", "prompt", "input", "x", "mo\u212adel"]
MODELS = ["gpt-4o", "gpt-5", "llama-3-70b", "llama-3-8b", "gemini-1.5-pro", "fraud-scorer", "whisper-1", "",
          "gpt-4o ", "GPT-4O"]
numbers = st.one_of(
    st.integers(min_value=-5, max_value=5000),
    st.sampled_from([0, 1, 4096, 4097, 16384, 16385, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]),
    st.sampled_from(["18446744073709551616", "99999999999999999999", "-9223372036854775809", "1e400", "-0",
                     "1.0", "1e2", "123456789012345678901234567890"]).map(Raw),
    st.floats(allow_nan=False, allow_infinity=False),
)
strings = st.one_of(
    st.sampled_from(MODELS),
    st.text(max_size=12),
    st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\u0000"', '"gpt-4o\\ud800"']).map(Raw),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)


def _objects(children: Any) -> Any:
    return st.lists(st.tuples(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), children), max_size=6).map(
        lambda pairs: Obj(tuple(pairs)))


json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4) | _objects(children),
                           max_leaves=25)


@st.composite
def request_bodies(draw: Any) -> Obj:
    """Bodies shaped like inference requests, with the fields that matter drawn adversarially."""
    pairs: list[tuple[str, Any]] = []
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=8)):
        if name.lower() in ("model", "mo\u212adel"):
            pairs.append((name, draw(st.sampled_from(MODELS) | scalars)))
        elif "config" in name.lower() or name == "parameters":
            pairs.append((name, Obj(tuple(draw(st.lists(st.tuples(
                st.sampled_from(["maxOutputTokens", "max_output_tokens", "candidateCount", "max_new_tokens",
                                 "max_tokens", "MaxOutputTokens"]), numbers), max_size=4))))))
        elif name.lower() == "messages":
            pairs.append((name, draw(st.lists(_objects(scalars), max_size=3))))
        elif name in ("max_tokens", "Max_Tokens", "max_completion_tokens", "n", "best_of", "N", "max_new_tokens"):
            pairs.append((name, draw(numbers | st.none())))
        else:
            pairs.append((name, draw(json_values)))
    if draw(st.booleans()):
        pairs.insert(0, ("model", draw(st.sampled_from(MODELS))))
    return Obj(tuple(pairs))


def dump(value: Any, depth_pad: int = 0) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        return "{" + ",".join(f"{dump(k)}:{dump(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, int) else repr(float(value))
    text = value.encode("utf-16", "surrogatepass").decode("utf-16")  # keep as is
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# ---- whole requests --------------------------------------------------------------------------

PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/messages",
         "/v1/audio/transcriptions", "/v1beta/models/gemini-1.5-pro:generateContent",
         "/v1beta/models/gemini-1.5-pro:streamGenerateContent", "/v2/models/fraud-scorer/infer",
         "/v2/models/fraud-scorer/versions/{seg}/infer", "/v1/models/resnet50/versions/{seg}:predict",
         "/v2/models/{seg}/infer", "/v1/models", "/{seg}"]
SEGMENTS = ["1", "%2e%2e%2f", "..", ".", "%252f", "%ff", "%00", "a%20b", "%ED%A0%80", "v1", "x:y"]
HEADER_NAMES = ["x_llm_authz_tenant", "x-llm-authz-tenant", "X_Api_Key", "x-tenant-id", "content-length",
                "x-envoy-auth-partial-body", "content-type", "x-request-id", "authorization", "x-api-key",
                "x-forwarded-for", "x_forwarded_for"]
CONTENT_TYPES = ["application/json", "", "text/plain", "application/json; charset=utf-8", "application/vnd+json",
                 "multipart/form-data; boundary=B", "multipart/form-data", "multipart/form-data; boundary=\"\""]


@dataclass
class Case:
    request: Any
    body: Obj | None
    truncated: bool
    authenticated_as: str | None


@st.composite
def forms(draw: Any) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(['name="model"', 'name="Model"', "name*=utf-8''model", 'name="file"; filename="a"',
                                     'name="model"; name*=utf-8\'\'x', 'name="prompt"']))
        value = draw(st.sampled_from(MODELS).map(str.encode) | st.binary(max_size=8))
        parts.append(b"--B\r\nContent-Disposition: form-data; " + name.encode() + b"\r\n\r\n" + value + b"\r\n")
    return b"".join(parts) + draw(st.sampled_from([b"--B--\r\n", b"", b"--B"]))


# (tenant, path, model, model named in the body?): requests the policy allows as they stand
ALLOWED = [("acme", "/v1/chat/completions", "gpt-4o", True), ("acme", "/v1/chat/completions", "gpt-4o-mini", True),
           ("acme", "/v1/completions", "gpt-4o-mini", True), ("acme", "/v2/models/fraud-scorer/infer", "fraud-scorer", False),
           ("research", "/v1/chat/completions", "llama-3-70b", True), ("research", "/v1/completions", "llama-3-70b", True),
           ("research", "/v1beta/models/gemini-1.5-pro:generateContent", "gemini-1.5-pro", False),
           ("research", "/v1/models/resnet50:predict", "resnet50", False),
           ("hobbyist", "/v1/chat/completions", "llama-3-8b", True)]
TWISTS = ["max_tokens", "Max_Tokens", "MAX_TOKENS", "max_completion_tokens", "max_output_tokens", "max_new_tokens",
          "max_tokens_to_sample", "n", "best_of", "N", "Model", "MODEL", "model", "mo\u212adel",
          "generationConfig", "generation_config", "parameters", "stream"]


@st.composite
def nearly_allowed(draw: Any) -> Case:
    """An allowed request with a few adversarial fields added: where a misreading would let it through."""
    tenant, path, model, in_body = draw(st.sampled_from(ALLOWED))
    pairs: list[tuple[str, Any]] = [("model", model)] if in_body else []
    pairs.append(("messages", [Obj((("role", "user"), ("content", "hi")))]))
    for name in draw(st.lists(st.sampled_from(TWISTS), max_size=3)):
        if name.casefold() in ("model", "mo\u212adel".casefold()):
            pairs.append((name, draw(st.sampled_from(MODELS))))
        elif name in ("generationConfig", "generation_config", "parameters"):
            pairs.append((name, Obj(tuple(draw(st.lists(st.tuples(
                st.sampled_from(["maxOutputTokens", "max_output_tokens", "candidateCount", "max_new_tokens",
                                 "MaxOutputTokens", "max_tokens"]), numbers), min_size=1, max_size=3))))))
        elif name == "stream":
            pairs.append((name, draw(st.booleans() | st.none())))
        else:
            pairs.append((name, draw(numbers | st.none())))
    draw(st.randoms()).shuffle(pairs)
    tree = Obj(tuple(pairs))
    body = dump(tree).encode("utf-8", "surrogatepass")
    headers = {"authorization": f"Bearer {KEYS[tenant]}", "content-type": "application/json"}
    truncated = draw(st.integers(0, 9)) == 0
    if truncated:
        body = body[: draw(st.integers(0, len(body)))]
        headers["x-envoy-auth-partial-body"] = "true"
        if draw(st.booleans()):
            headers["content-length"] = None
    return Case(check_request(path=path, headers=headers, body=body), tree, truncated, tenant)


@st.composite
def cases(draw: Any) -> Case:
    if draw(st.booleans()):
        return draw(nearly_allowed())
    path = draw(st.sampled_from(PATHS)).replace("{seg}", draw(st.sampled_from(SEGMENTS) | st.text(
        st.characters(codec="ascii", exclude_characters="/?#"), min_size=1, max_size=6)))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "post", ""]))
    who = draw(st.sampled_from([None, "acme", "research", "hobbyist", "readonly", "bogus"]))
    headers: dict[str, str] = {}
    if who == "bogus":
        headers["authorization"] = "Bearer sk-not-a-key"
    elif who:
        if draw(st.booleans()):
            headers["authorization"] = f"Bearer {KEYS[who]}"
        else:
            headers["x-api-key"] = KEYS[who]
    for name in draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=3)):
        if name not in ("authorization", "x-api-key"):
            headers[name] = draw(st.sampled_from(["true", "false", "\u00b2", "5", "99999999999999999999", "research",
                                                  "", "-1"]) | st.text(st.characters(codec="utf-8"), max_size=8))
    tree: Obj | None = None
    kind = draw(st.sampled_from(["json", "json", "json", "bytes", "form", "deep", "none"]))
    if kind == "json":
        tree = draw(request_bodies())
        body = dump(tree).encode("utf-8", "surrogatepass")
        encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]))
        if encoding != "utf-8":
            body = dump(tree).encode(encoding, "replace")
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    elif kind == "form":
        body = draw(forms())
    elif kind == "deep":
        depth = draw(st.integers(1, 200))
        body = b'{"model":"gpt-4o","x":' + b"[" * depth + b"]" * depth + b"}"
    else:
        body = b""
    truncated = False
    if body and draw(st.integers(0, 5)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
        truncated = True
        headers["x-envoy-auth-partial-body"] = "true"
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    request = check_request(path=path, method=method, headers=headers, body=body)
    http = request.attributes.request.http
    if content_type or "content-type" not in headers:
        http.headers["content-type"] = content_type
    if draw(st.booleans()):
        # the body only in the string field, as an Envoy without pack_as_bytes sends it
        http.body = body.decode("utf-8", "replace")
        http.ClearField("raw_body")
    return Case(request, tree, truncated or headers.get("x-envoy-auth-partial-body", "").strip().lower() == "true",
                who if who in KEYS else None)


# ---- a reference reading of the pairs: the strictest any upstream could make -------------------

TOKEN_FIELDS = {"max_tokens", "max_completion_tokens", "max_output_tokens", "maxoutputtokens", "max_new_tokens",
                "max_tokens_to_sample"}
MULTIPLIERS = {"n", "best_of", "candidatecount", "candidate_count", "num_return_sequences"}
CONFIGS = {"generationconfig", "generation_config", "parameters", "sampling_params"}


def _int_value(v: Any) -> int | None:
    if isinstance(v, Raw):
        try:
            return int(v.text)
        except ValueError:
            return None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def has_case_variant_keys(value: Any) -> bool:
    if isinstance(value, Obj):
        folded = [k.casefold() for k, _ in value.pairs]
        return len(set(folded)) != len(folded) or any(has_case_variant_keys(v) for _, v in value.pairs)
    if isinstance(value, list):
        return any(has_case_variant_keys(v) for v in value)
    return False


def strictest_reading(tree: Obj) -> tuple[set[Any], int | None]:
    """Every value any spelling of `model` names, and the largest output-token count any reading allows."""
    models = {v for k, v in tree.pairs if k.casefold() == "model"}
    limits, mult = [], 1
    sources = [tree] + [v for k, v in tree.pairs if k.casefold() in CONFIGS and isinstance(v, Obj)]
    for obj in sources:
        for k, v in obj.pairs:
            n = _int_value(v)
            if n is None:
                continue
            if k.casefold() in TOKEN_FIELDS:
                limits.append(n)
            elif k.casefold() in MULTIPLIERS:
                mult = max(mult, n)
    return models, (max(limits) * mult if limits else None)


TENANT_LIMITS = {"acme": ({"gpt-4o-mini": 2048}, 4096), "research": ({}, 16384), "hobbyist": ({}, 512),
                 "readonly": ({}, 4096)}


# ---- the property ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checker():
    workdir = Path(tempfile.mkdtemp(prefix="llm-authz-props-"))
    snapshot = load_snapshot(Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants"))
    log = AuditLog(workdir / "audit", durability="buffered")
    log.archive_revision(snapshot.revision.source)
    answered: Counter[str] = Counter()
    yield Checker(snapshot, audit=log), answered
    log.close()
    try:
        records = Counter(r["decision_id"] for r in iter_records([workdir / "audit"]))
        assert records == answered, "every answer has exactly one record, and every record an answer"
        report = verify([workdir / "audit"])
        assert report.ok, report.problem
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@settings(settings.get_profile("check"))
@given(case=cases())
def test_every_request_is_answered_logged_once_and_never_read_in_the_callers_favour(checker, case):
    check, answered = checker
    response = check.check(case.request)
    assert response.HasField("ok_response") or response.HasField("denied_response")
    status = 200 if response.HasField("ok_response") else response.denied_response.status.code
    assert status in STATUSES
    decision_id = response.dynamic_metadata["decision_id"]
    answered[decision_id] += 1
    event(f"status {status}")
    if status != 200:
        return
    # allowed: nothing ambiguous, nothing unseen, nothing beyond the limit under any reading
    assert not case.truncated
    assert case.authenticated_as is not None
    if case.body is not None:
        assert not has_case_variant_keys(case.body)
        models, tokens = strictest_reading(case.body)
        grants, default_limit = TENANT_LIMITS[case.authenticated_as]
        for model in models:
            limit = grants.get(model) or default_limit
            if tokens is not None:
                assert tokens <= limit, (model, tokens, limit)
