"""Decision → CheckResponse, as Envoy will apply it."""

import orjson
from google.rpc import code_pb2

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


def test_rate_limited_has_retry_after():
    r = to_check_response(from_result({"allow": False, "reasons": ["rate_limited"]}), ctx())
    assert r.denied_response.status.code == 429
    assert headers_of(r.denied_response.headers)["retry-after"].isdigit()


def test_policy_error_hides_details():
    r = to_check_response(Decision.policy_error("eval_builtin_error: secret detail"), ctx())
    body = orjson.loads(r.denied_response.body)
    assert r.denied_response.status.code == 500 and body["error"]["code"] == "policy_error"
    assert "secret detail" not in r.denied_response.body


def test_opa_envoy_body_is_sent_as_is():
    d = from_result({"allowed": False, "http_status": 403, "body": "custom"})
    r = to_check_response(d, ctx())
    assert r.denied_response.body == "custom"
    assert "content-type" not in headers_of(r.denied_response.headers)


def test_a_header_the_policy_sets_for_the_upstream_replaces_the_clients_one():
    r = to_check_response(Decision(allow=True, headers={"authorization": "Bearer upstream-token"}), ctx())
    assert headers_of(r.ok_response.headers)["authorization"] == "Bearer upstream-token"
    assert "authorization" not in r.ok_response.headers_to_remove
