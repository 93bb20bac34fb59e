"""OPA-Envoy's result object → CheckResponse, field by field as OPA-Envoy's envoyauth/response.go maps it."""

import pytest
from envoy.config.core.v3 import base_pb2
from google.rpc import code_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_authz.decision import from_result
from llm_authz.errors import PolicyError
from llm_authz.response import CheckContext, to_check_response

APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def ctx():
    return CheckContext(decision_id="d-1", request_headers={"x-client": "1", "authorization": "Bearer t"})


def lines(options):
    return [(o.header.key, o.header.value) for o in options]


def answer(result):
    return to_check_response(from_result(result), ctx())


def test_boolean_true_allows_and_false_denies_403():
    assert answer(True).status.code == code_pb2.OK
    denied = answer(False)
    assert denied.status.code == code_pb2.PERMISSION_DENIED and denied.denied_response.status.code == 403


def test_headers_go_upstream_on_allow():
    r = answer({"allowed": True, "headers": {"X-Ext-Auth-Allow": "yes"}})
    assert ("x-ext-auth-allow", "yes") in lines(r.ok_response.headers)


def test_headers_go_to_the_client_on_deny_with_status_and_body():
    r = answer({"allowed": False, "headers": {"x-ext-auth-allow": "no"}, "body": "Unauthorized Request",
                "http_status": 301})
    denied = r.denied_response
    assert denied.status.code == 301 and denied.body == "Unauthorized Request"
    assert ("x-ext-auth-allow", "no") in lines(denied.headers)
    assert ("x-llm-authz-decision-id", "d-1") in lines(denied.headers)


def test_headers_array_form_gives_every_value_on_deny():
    r = answer({"allowed": False, "http_status": 400, "body": "Unauthorized Request",
                "headers": [{"why": "/admin path is not allowed"}, {"why": "POST method is not allowed"}]})
    got = [(k, v) for k, v in lines(r.denied_response.headers) if k == "why"]
    assert got == [("why", "/admin path is not allowed"), ("why", "POST method is not allowed")]
    second = [o for o in r.denied_response.headers if o.header.key == "why"][1]
    assert second.append_action == APPEND


def test_header_value_arrays_append_after_the_first_on_allow():
    r = answer({"allowed": True, "headers": {"x-tag": ["a", "b"]}, "response_headers_to_add": {"x-r": ["1", "2"]}})
    up = [o for o in r.ok_response.headers if o.header.key == "x-tag"]
    assert [o.header.value for o in up] == ["a", "b"] and up[1].append_action == APPEND
    down = [o for o in r.ok_response.response_headers_to_add if o.header.key == "x-r"]
    assert [o.header.value for o in down] == ["1", "2"]


def test_allow_only_fields():
    r = answer({"allowed": True, "response_headers_to_add": {"x-foo": "bar"},
                "request_headers_to_remove": ["One-Auth-Header"],
                "query_parameters_to_set": {"user-role": "guest", "tags": ["main-flow", "auth-enabled"]},
                "query_parameters_to_remove": ["debug"]})
    ok = r.ok_response
    assert ("x-foo", "bar") in lines(ok.response_headers_to_add)
    assert "one-auth-header" in ok.headers_to_remove
    assert [(q.key, q.value) for q in ok.query_parameters_to_set] == [
        ("user-role", "guest"), ("tags", "main-flow"), ("tags", "auth-enabled")]
    assert list(ok.query_parameters_to_remove) == ["debug"]


def test_deny_reads_neither_allow_only_fields_nor_is_stopped_by_them():
    r = answer({"allowed": False, "response_headers_to_add": 7, "query_parameters_to_set": "x"})
    assert r.denied_response.status.code == 403


def test_allow_reads_neither_body_nor_http_status():
    assert answer({"allowed": True, "body": 1, "http_status": "teapot"}).status.code == code_pb2.OK


def test_dynamic_metadata_on_allow_and_deny_with_the_decision_id():
    for allowed in (True, False):
        meta = answer({"allowed": allowed, "dynamic_metadata": {"foo": "bar", "n": [1, {"a": True}]}}).dynamic_metadata
        assert meta["foo"] == "bar" and meta["decision_id"] == "d-1" and meta["n"][1]["a"] is True


def test_policy_headers_cannot_replace_the_identity_headers():
    r = answer({"allowed": True, "headers": {"x-llm-authz-tenant": ["evil", "more"]}})
    assert [v for k, v in lines(r.ok_response.headers) if k == "x-llm-authz-tenant"] == [""]


@pytest.mark.parametrize("result", [
    {"allowed": "true"},
    {"allowed": True, "headers": "x"},
    {"allowed": True, "headers": [{"a": "b"}, "c"]},
    {"allowed": True, "headers": {"a": 1}},
    {"allowed": True, "headers": {"a": ["b", 2]}},
    {"allowed": True, "response_headers_to_add": ["x"]},
    {"allowed": True, "request_headers_to_remove": "x"},
    {"allowed": True, "query_parameters_to_set": {"a": 1}},
    {"allowed": True, "query_parameters_to_remove": [1]},
    {"allowed": True, "dynamic_metadata": []},
    {"allowed": False, "body": {}},
    {"allowed": False, "http_status": 418},  # Go knows it, Envoy's StatusCode enum does not
    {"allowed": False, "http_status": 99},
    {"allowed": False, "http_status": True},
    {"allowed": False, "http_status": "403"},
])
def test_ill_typed_fields_are_policy_errors(result):
    with pytest.raises(PolicyError):
        from_result(result)


_json = st.recursive(st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=12)
_fields = st.sampled_from(["headers", "response_headers_to_add", "request_headers_to_remove", "body", "http_status",
                           "dynamic_metadata", "query_parameters_to_set", "query_parameters_to_remove"])


@settings(max_examples=300, deadline=None)
@given(allowed=st.booleans(), extra=st.dictionaries(_fields, _json, max_size=4))
def test_any_result_maps_or_is_a_policy_error(allowed, extra):
    try:
        decision = from_result({"allowed": allowed, **extra})
    except PolicyError:
        return
    assert decision.allow is allowed
    to_check_response(decision, ctx())


def test_query_changes_apply_each_on_its_own():
    only_set = answer({"allowed": True, "query_parameters_to_set": {"a": "1"}}).ok_response
    assert [(q.key, q.value) for q in only_set.query_parameters_to_set] == [("a", "1")]
    only_remove = answer({"allowed": True, "query_parameters_to_remove": ["debug"]}).ok_response
    assert list(only_remove.query_parameters_to_remove) == ["debug"]


def test_a_header_the_policy_sets_is_not_also_removed_and_removals_are_listed_once():
    ok = answer({"allowed": True, "headers": {"x-set": "v"},
                 "request_headers_to_remove": ["x-set", "x-gone", "X-Gone", "x-gone"]}).ok_response
    assert ("x-set", "v") in lines(ok.headers) and list(ok.headers_to_remove).count("x-gone") == 1
    assert "x-set" not in ok.headers_to_remove


def test_every_value_of_a_response_header_reaches_the_client_appended():
    ok = answer({"allowed": True, "response_headers_to_add": {"x-r": ["1", "2", "3"]}}).ok_response
    values = [o for o in ok.response_headers_to_add if o.header.key == "x-r"]
    assert [o.header.value for o in values] == ["1", "2", "3"]
    assert [o.append_action for o in values[1:]] == [APPEND, APPEND]
