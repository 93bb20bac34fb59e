"""Decision → CheckResponse, as Envoy will apply it."""

import orjson
import pytest
from google.rpc import code_pb2
from hypothesis import given
from hypothesis import strategies as st

from llm_authz import error_bodies

from llm_authz.decision import Decision, from_result
from llm_authz.response import CheckContext, to_check_response


def headers_of(options):
    return {o.header.key: o.header.value for o in options}


def ctx(**kw):
    base = dict(decision_id="d-1", request_headers={"authorization": "Bearer x", "x-llm-authz-evil": "1",
                                                    "x-llm-authz-tenant": "spoof", "content-type": "application/json"},
                tenant="acme", tier="premium", subject="ak_1", model="gpt-4o")
    base.update(kw)
    return CheckContext(**base)


def test_allow_sets_identity_headers_and_removes_client_ones():
    r = to_check_response(Decision(allow=True, headers={"x-llm-authz-tenant": "policy-cannot", "x-extra": "1"}), ctx())
    assert r.status.code == code_pb2.OK
    h = headers_of(r.ok_response.headers)
    assert h["x-llm-authz-tenant"] == "acme" and h["x-llm-authz-subject"] == "ak_1"
    assert h["x-llm-authz-decision-id"] == "d-1" and h["x-extra"] == "1"
    assert set(r.ok_response.headers_to_remove) == {"authorization", "x-llm-authz-evil"}
    meta = r.dynamic_metadata
    assert meta["decision_id"] == "d-1" and meta["tenant"] == "acme" and meta["tier"] == "premium" and meta["model"] == "gpt-4o"


def test_deny_401_has_www_authenticate_and_openai_error_body():
    d = from_result({"allow": False, "reasons": ["invalid_credential"]})
    r = to_check_response(d, ctx(identity_error="the API key has expired"))
    assert r.status.code == code_pb2.UNAUTHENTICATED
    assert r.denied_response.status.code == 401
    h = headers_of(r.denied_response.headers)
    assert h["www-authenticate"] == 'Bearer realm="llm-authz", error="invalid_token", error_description="the API key has expired"'
    body = orjson.loads(r.denied_response.body)
    assert body == {"error": {"type": "authentication_error", "code": "invalid_credential",
                              "message": "The credential was rejected: the API key has expired.",
                              "param": None, "decision_id": "d-1"}}


def test_insufficient_scope_names_the_scope():
    d = from_result({"allow": False, "reasons": ["insufficient_scope"]})
    r = to_check_response(d, ctx(missing_scopes=("inference:invoke",)))
    h = headers_of(r.denied_response.headers)
    assert h["www-authenticate"] == 'Bearer realm="llm-authz", error="insufficient_scope", scope="inference:invoke"'
    assert r.denied_response.status.code == 403
    several = to_check_response(d, ctx(missing_scopes=("inference:invoke", "models:read")))
    assert headers_of(several.denied_response.headers)["www-authenticate"] == (
        'Bearer realm="llm-authz", error="insufficient_scope", scope="inference:invoke models:read"')


def test_rate_limited_has_retry_after():
    r = to_check_response(from_result({"allow": False, "reasons": ["rate_limited"]}), ctx())
    assert r.denied_response.status.code == 429
    assert headers_of(r.denied_response.headers)["retry-after"].isdigit()


def test_a_policy_error_tells_the_client_only_that_it_happened():
    r = to_check_response(Decision.policy_error(), ctx())
    body = orjson.loads(r.denied_response.body)
    assert r.denied_response.status.code == 500 and body["error"]["code"] == "policy_error"
    assert body["error"]["message"] == "The request could not be authorized because of an internal policy error."


def test_opa_envoy_body_is_sent_as_is():
    d = from_result({"allowed": False, "http_status": 403, "body": "custom"})
    r = to_check_response(d, ctx())
    assert r.denied_response.body == "custom"
    assert "content-type" not in headers_of(r.denied_response.headers)


def test_a_header_the_policy_sets_for_the_upstream_replaces_the_clients_one():
    r = to_check_response(Decision(allow=True, headers={"authorization": "Bearer upstream-token"}), ctx())
    assert headers_of(r.ok_response.headers)["authorization"] == "Bearer upstream-token"
    assert "authorization" not in r.ok_response.headers_to_remove


# ---- each API family's own error shape ---------------------------------------------------------

def deny(reasons, family, **kw):
    r = to_check_response(from_result({"allow": False, "reasons": reasons}), ctx(family=family, **kw))
    return r, orjson.loads(r.denied_response.body), headers_of(r.denied_response.headers)


def test_every_denial_names_its_reason_and_decision_in_headers():
    for family in (None, "openai", "anthropic", "gemini", "kserve", "tfserving"):
        _, _, h = deny(["model_not_allowed"], family)
        assert h["x-llm-authz-reason"] == "model_not_allowed" and h["x-llm-authz-decision-id"] == "d-1"
    r = to_check_response(from_result({"allowed": False, "http_status": 403, "body": "custom"}), ctx())
    assert headers_of(r.denied_response.headers)["x-llm-authz-reason"] == "policy_denied"


def test_anthropic_routes_answer_anthropics_envelope():
    _, body, _ = deny(["model_not_allowed"], "anthropic")
    assert body == {"type": "error", "request_id": "d-1",
                    "error": {"type": "permission_error",
                              "message": "The model 'gpt-4o' is not available to this tenant.",
                              "details": {"error_code": "model_not_allowed", "decision_id": "d-1"}}}


def test_anthropic_error_types_by_status():
    cases = {"missing_credential": "authentication_error", "insufficient_scope": "permission_error",
             "payload_too_large": "request_too_large", "rate_limited": "rate_limit_error",
             "bad_request": "invalid_request_error"}
    for reason, kind in cases.items():
        assert deny([reason], "anthropic")[1]["error"]["type"] == kind
    assert deny(["policy_error"], "anthropic")[1]["error"]["type"] == "api_error"
    r = to_check_response(from_result({"allow": False, "reasons": ["custom"], "status": 404}), ctx(family="anthropic"))
    assert orjson.loads(r.denied_response.body)["error"]["type"] == "not_found_error"
    r = to_check_response(from_result({"allow": False, "reasons": ["custom"], "status": 402}), ctx(family="anthropic"))
    assert orjson.loads(r.denied_response.body)["error"]["type"] == "invalid_request_error"


def test_gemini_routes_answer_googles_error_model():
    _, body, _ = deny(["rate_limited"], "gemini")
    assert body == {"error": {
        "code": 429, "message": "The tenant's request or token quota is spent; retry later.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMITED",
                     "domain": "llm-authz", "metadata": {"reason": "rate_limited", "decisionId": "d-1"}}]}}


def test_google_status_names_by_http_status():
    cases = {"missing_credential": (401, "UNAUTHENTICATED"), "model_not_allowed": (403, "PERMISSION_DENIED"),
             "payload_too_large": (413, "INVALID_ARGUMENT"), "bad_request": (400, "INVALID_ARGUMENT"),
             "policy_error": (500, "INTERNAL")}
    for reason, (code, status) in cases.items():
        err = deny([reason], "gemini")[1]["error"]
        assert (err["code"], err["status"]) == (code, status)
        assert err["details"][0]["reason"] == reason.upper()


def test_kserve_and_tf_serving_answer_a_string_error():
    for family in ("kserve", "tfserving"):
        _, body, h = deny(["operation_not_allowed"], family, operation="infer")
        assert body == {"error": "The operation 'infer' is not allowed on model 'gpt-4o' for this tenant."}
        assert h["x-llm-authz-reason"] == "operation_not_allowed"


def test_openai_shape_is_unchanged_and_the_default():
    for family in ("openai", None, "unknown-family"):
        _, body, _ = deny(["payload_too_large"], family, max_body_bytes=10)
        assert body == {"error": {"type": "invalid_request_error", "code": "payload_too_large",
                                  "message": "The request body is larger than this tenant's limit of 10 bytes, "
                                             "or was cut short.", "param": None, "decision_id": "d-1"}}


@given(family=st.sampled_from(["openai", "anthropic", "gemini", "kserve", "tfserving", None, "other"]),
       status=st.integers(200, 599), reason=st.text(max_size=300), message=st.text(max_size=300))
def test_any_reason_and_message_make_a_json_body_and_a_valid_header(family, status, reason, message):
    body = orjson.loads(error_bodies.render(family, status, reason, message, "d-1"))
    assert "error" in body
    header = error_bodies.reason_header(reason)
    assert header and all(" " <= c <= "~" for c in header) and len(header) <= 128


def test_a_policys_reason_with_control_characters_is_cleaned_for_the_header():
    r = to_check_response(from_result({"allow": False, "reasons": ["bad\r\nset-cookie: x"]}), ctx(family="gemini"))
    h = headers_of(r.denied_response.headers)
    assert h["x-llm-authz-reason"] == "bad??set-cookie: x"
    assert orjson.loads(r.denied_response.body)["error"]["details"][0]["metadata"]["reason"] == "bad\r\nset-cookie: x"


def test_a_lone_surrogate_in_a_message_still_makes_a_body():
    for family in ("openai", "anthropic", "gemini", "kserve"):
        body = error_bodies.render(family, 403, "model_not_allowed", "The model 'gpt-\ud800' is not available.", "d")
        assert "gpt-?" in orjson.loads(body).__repr__()


def test_a_model_name_is_shown_up_to_80_characters():
    from llm_authz.response import error_message

    def shown(model):
        return error_message("model_not_allowed", CheckContext(decision_id="d", request_headers={}, model=model))

    assert shown("m" * 80) == f"The model '{'m' * 80}' is not available to this tenant."
    assert shown("m" * 81) == f"The model '{'m' * 80}…' is not available to this tenant."
    assert shown(None) == "The model '' is not available to this tenant."


def test_an_anonymous_allow_sends_empty_identity_headers_and_flags_are_listed():
    r = to_check_response(Decision(allow=True, flags=["travel", "volume"]), ctx(tenant=None, subject=None))
    h = headers_of(r.ok_response.headers)
    assert (h["x-llm-authz-tenant"], h["x-llm-authz-subject"], h["x-llm-authz-flags"]) == ("", "", "travel,volume")
    assert "x-llm-authz-flags" not in headers_of(to_check_response(Decision(allow=True), ctx()).ok_response.headers)


FULL = dict(tenant="acme", model="gpt-4o", operation="chat", identity_error="the token has expired",
            payload_error="invalid JSON: x", missing_scopes=("inference:invoke", "models:read"), max_body_bytes=4096,
            max_tokens_limit=512, max_tokens=1000)


@pytest.mark.parametrize("code, message, bare", [
    ("missing_credential", "No credential was presented: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.", None),
    ("invalid_credential", "The credential was rejected: the token has expired.",
     "The credential was rejected: it is not valid."),
    ("tenant_mismatch", "The tenant named in x-tenant-id is not the tenant of the credential, or that tenant is unknown.",
     None),
    ("network_not_allowed", "Requests from this network address are not allowed for this tenant.", None),
    ("bad_request", "The request is malformed: invalid JSON: x.", "The request is malformed: the body could not be read."),
    ("payload_too_large", "The request body is larger than this tenant's limit of 4096 bytes, or was cut short.",
     "The request body is larger than this tenant's limit, or was cut short."),
    ("route_not_allowed", "This method and path name no model operation that can be authorized.", None),
    ("insufficient_scope", "The credential lacks the required scope(s): inference:invoke models:read.",
     "The credential lacks the required scope(s): unknown."),
    ("operation_not_allowed", "The operation 'chat' is not allowed on model 'gpt-4o' for this tenant.", None),
    ("max_tokens_exceeded", "max_tokens 1000 is above this tenant's limit of 512.", None),
    ("credential_anomaly",
     "This use of the credential is unlike its usual use (network, place or volume); ask its owner or administrator.",
     None),
    ("rate_limited", "The tenant's request or token quota is spent; retry later.", None),
    ("policy_error", "The request could not be authorized because of an internal policy error.", None),
    ("policy_denied", "The request was denied by policy.", None),
])
def test_each_denial_tells_the_client_why_in_its_own_words(code, message, bare):
    from llm_authz.response import error_message

    assert error_message(code, CheckContext(decision_id="d", request_headers={}, **FULL)) == message
    if bare is not None:
        assert error_message(code, CheckContext(decision_id="d", request_headers={})) == bare


def test_a_401_description_cannot_break_out_of_its_quoted_string():
    d = from_result({"allow": False, "reasons": ["invalid_credential"]})
    h = headers_of(to_check_response(d, ctx(identity_error='bad "x" \\y')).denied_response.headers)
    assert h["www-authenticate"] == 'Bearer realm="llm-authz", error="invalid_token", error_description="bad \'x\' y"'
    h = headers_of(to_check_response(d, ctx(identity_error=None)).denied_response.headers)
    assert h["www-authenticate"] == 'Bearer realm="llm-authz", error="invalid_token", error_description="invalid credential"'
    missing = from_result({"allow": False, "reasons": ["missing_credential"]})
    assert headers_of(to_check_response(missing, ctx()).denied_response.headers)["www-authenticate"] == 'Bearer realm="llm-authz"'
    assert "www-authenticate" not in headers_of(to_check_response(from_result(False), ctx()).denied_response.headers)


def test_envoy_metadata_names_the_decision_for_access_logs():
    deny = from_result({"allow": False, "reasons": ["model_not_allowed"], "flags": ["travel", "volume"]})
    meta = to_check_response(deny, ctx()).dynamic_metadata
    assert dict(meta) == {"decision_id": "d-1", "tenant": "acme", "tier": "premium", "model": "gpt-4o",
                          "allowed": False, "status": 403.0, "flags": "travel,volume"}
    allow = from_result({"allowed": True, "dynamic_metadata": {"route": "chat"}})
    meta = to_check_response(allow, ctx(tenant=None, tier=None, model=None)).dynamic_metadata
    assert dict(meta) == {"decision_id": "d-1", "tenant": "", "tier": "", "model": "", "allowed": True,
                          "status": 200.0, "route": "chat"}


def test_a_429_says_when_to_retry_and_reports_the_buckets():
    d = from_result({"allow": False, "reasons": ["rate_limited"]})
    h = headers_of(to_check_response(d, ctx(retry_after_seconds=7, ratelimit_headers={
        "x-ratelimit-remaining-requests": "0", "content-type": "text/plain"})).denied_response.headers)
    assert (h["retry-after"], h["x-ratelimit-remaining-requests"], h["content-type"]) == ("7", "0", "application/json")
    assert headers_of(to_check_response(d, ctx()).denied_response.headers)["retry-after"] == "60"
    assert "retry-after" not in headers_of(to_check_response(from_result(False), ctx(retry_after_seconds=7))
                                           .denied_response.headers)


def test_the_grpc_status_of_a_deny_says_unauthenticated_or_permission_denied_and_names_the_reason():
    for reasons, rpc in ((["invalid_credential"], code_pb2.UNAUTHENTICATED), (["model_not_allowed"], code_pb2.PERMISSION_DENIED),
                         (["rate_limited"], code_pb2.PERMISSION_DENIED)):
        r = to_check_response(from_result({"allow": False, "reasons": reasons}), ctx())
        assert (r.status.code, r.status.message) == (rpc, reasons[0])
    r = to_check_response(from_result({"allowed": False, "http_status": 503, "body": "no"}), ctx())
    assert (r.status.message, r.denied_response.status.code) == ("policy_denied", 503)
    assert "content-type" not in headers_of(r.denied_response.headers)  # the policy's own body, as it gave it
