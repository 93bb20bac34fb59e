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
