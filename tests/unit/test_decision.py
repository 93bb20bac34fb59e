"""Policy results of every accepted shape, and every other shape as a policy error."""

import pytest

from llm_authz.decision import from_result, order_reasons
from llm_authz.engine.base import UNDEFINED
from llm_authz.errors import PolicyError


def test_llm_authz_deny_takes_status_and_code_from_the_first_table_row():
    d = from_result({"allow": False, "reasons": ["max_tokens_exceeded", "missing_credential", "custom"]})
    assert d.status == 401 and d.code == "missing_credential"
    assert d.reasons == ["missing_credential", "max_tokens_exceeded", "custom"]


def test_explicit_status_is_kept():
    assert from_result({"allow": False, "status": 429, "reasons": ["rate_limited"]}).status == 429


def test_allow_with_headers_and_obligations():
    d = from_result({"allow": True, "headers": {"X-Tier": "free"}, "obligations": {"max_tokens": 5}})
    assert d.allow and d.headers == {"x-tier": "free"} and d.obligations == {"max_tokens": 5}


def test_boolean_results():
    assert from_result(True).allow
    d = from_result(False)
    assert not d.allow and d.status == 403 and d.code == "policy_denied"


def test_opa_envoy_object():
    d = from_result({"allowed": False, "http_status": 429, "body": "no", "headers": {"a": "b"},
                     "response_headers_to_add": {"x": ["1", "2"]}, "request_headers_to_remove": ["X-Y"]})
    assert not d.allow and d.status == 429 and d.body == "no" and d.deny_headers == [("a", "b")]
    # response_headers_to_add and request_headers_to_remove are allow-only: not read on a deny
    assert d.response_headers == {} and d.headers_to_remove == []


@pytest.mark.parametrize("result", [
    UNDEFINED, None, 1, "allow", [], {}, {"allow": "yes"}, {"allow": False, "reasons": "x"},
    {"allow": False, "status": 99}, {"allow": False, "status": True}, {"allow": True, "headers": {"a": 1}},
    {"allowed": 1}, {"allowed": False, "body": {}}, {"allow": True, "obligations": []},
])
def test_other_shapes_are_policy_errors(result):
    with pytest.raises(PolicyError):
        from_result(result)


def test_order_reasons_dedupes():
    assert order_reasons(["b", "bad_request", "a", "b", "tenant_mismatch"]) == ["tenant_mismatch", "bad_request", "b", "a"]


@pytest.mark.parametrize("status", [200, 429, 599])
def test_a_deny_may_set_any_http_status(status):
    assert from_result({"allow": False, "status": status}).status == status


@pytest.mark.parametrize("status", [199, 600, True, "403", 403.0])
def test_a_status_that_is_not_an_http_status_is_a_policy_error(status):
    with pytest.raises(PolicyError) as error:
        from_result({"allow": False, "status": status})
    assert str(error.value) == "decision status must be an HTTP status code"  # the text the record keeps


NAMES = "must be a list of names ([a-z0-9_.-], at most 64 characters)"


@pytest.mark.parametrize("result, message", [
    (UNDEFINED, "the policy returned no decision (undefined)"),
    (None, "the decision must be an object or a boolean, got NoneType"),
    ([], "the decision must be an object or a boolean, got list"),
    ({}, "the decision object has neither 'allow' nor 'allowed'"),
    ({"allow": "yes"}, "decision 'allow' must be a boolean"),
    ({"allow": False, "reasons": [1]}, "decision 'reasons' must be a list of strings"),
    ({"allow": True, "obligations": []}, "decision 'obligations' must be an object"),
    ({"allow": False, "message": 5}, "decision 'message' must be a string"),
    ({"allow": True, "headers": {"a": 1}}, "decision headers['a'] must be a string"),
    ({"allow": True, "headers": []}, "decision headers must be an object"),
    ({"allow": True, "response_headers": {"a": 1}}, "decision response_headers['a'] must be a string"),
    ({"allow": True, "flags": ["Bad Name"]}, f"decision 'flags' {NAMES}"),
    ({"allow": True, "flags": ["x" * 65]}, f"decision 'flags' {NAMES}"),
    ({"allow": True, "anomalies": "travel"}, f"decision 'anomalies' {NAMES}"),
])
def test_each_ill_shaped_result_says_what_is_wrong_in_the_record(result, message):
    """The text is what the audit record keeps as the policy error (and the log line)."""
    with pytest.raises(PolicyError) as error:
        from_result(result)
    assert str(error.value) == message


def test_the_parts_of_an_llm_authz_result():
    allow = from_result({"allow": True, "reasons": ["b", "a", "b"], "message": "ignored on allow",
                         "headers": {"X-List": ["a", "b"], "X-One": "1"}, "response_headers": {"X-R": "r"},
                         "flags": ["travel", "travel", "x" * 64], "anomalies": ["countries"]})
    assert (allow.allow, allow.status, allow.reasons, allow.message) == (True, 200, ["b", "a"], None)
    assert allow.headers == {"x-list": "a,b", "x-one": "1"} and allow.response_headers == {"x-r": "r"}
    assert allow.flags == ["travel", "x" * 64] and allow.anomalies == ["countries"]
    deny = from_result({"allow": False, "message": "why", "reasons": ["custom"]})
    assert (deny.status, deny.code, deny.reasons, deny.message) == (403, "custom", ["custom"], "why")
    assert from_result({"allow": False}).reasons == ["policy_denied"]
    assert from_result({"allow": True, "flags": None, "anomalies": None}).flags == []


@pytest.mark.parametrize("reason, status", [
    ("policy_error", 500), ("missing_credential", 401), ("invalid_credential", 401), ("tenant_mismatch", 403),
    ("network_not_allowed", 403), ("bad_request", 400), ("payload_too_large", 413), ("route_not_allowed", 403),
    ("insufficient_scope", 403), ("model_not_allowed", 403), ("operation_not_allowed", 403),
    ("max_tokens_exceeded", 403), ("credential_anomaly", 403), ("rate_limited", 429), ("anything_else", 403),
])
def test_each_reason_has_its_status(reason, status):
    assert from_result({"allow": False, "reasons": [reason]}).status == status


def test_an_unreadable_json_body_on_a_route_without_a_model_is_400_whatever_the_policy_said():
    from types import SimpleNamespace

    from llm_authz.decision import Decision, unread_body_denied

    def body(content_type: str, error: str | None = "malformed_json"):
        return SimpleNamespace(content_type=content_type, error=error)

    allowed = Decision(allow=True)
    for content_type in ("application/json", "application/problem+json"):
        denied = unread_body_denied(allowed, None, body(content_type))
        assert (denied.allow, denied.status, denied.reasons, denied.code) == (False, 400, ["bad_request"], "bad_request")
    assert unread_body_denied(allowed, None, body("text/plain")) is allowed  # not JSON: the policy never parses it
    assert unread_body_denied(allowed, None, body("application/json", None)) is allowed  # read fine
    assert unread_body_denied(allowed, object(), body("application/json")) is allowed  # a model route answers itself
    already = Decision(allow=False, status=400, reasons=["bad_request"], code="bad_request", message="kept")
    assert unread_body_denied(already, None, body("application/json")) is already
