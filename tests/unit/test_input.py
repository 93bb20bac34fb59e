"""The input document matches its documented schema and never carries a credential."""

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_authz.facts.payload import extract_payload
from llm_authz.facts.request import from_check_request
from llm_authz.facts.routes import match_route
from llm_authz.identity.model import Identity
from llm_authz.input import InputV1, build_input, json_schema
from tests.helpers import check_request

SECRET = "sk-llm-secret-value-123456"
REPO = Path(__file__).resolve().parents[2]


def build(headers=None, body=None, path="/v1/chat/completions", identity=None):
    body = body if body is not None else {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    facts = from_check_request(check_request(path=path, body=body, headers=headers))
    route = match_route(facts.method, facts.path)
    return build_input(facts, route, extract_payload(facts, route), identity or Identity(), None)


def test_document_validates_against_the_schema_models():
    doc = build(headers={"authorization": f"Bearer {SECRET}", "x-tenant-id": "acme"})
    InputV1.model_validate(doc)
    assert doc["schema"] == "llm-authz/input/v1"
    assert doc["tenant"]["hint"] == "acme"
    assert doc["model"] == {"name": "gpt-4o", "operation": "chat", "family": "openai", "source": "body", "version": None}


def test_credentials_never_reach_the_input():
    doc = build(headers={"authorization": f"Bearer {SECRET}", "x-api-key": SECRET, "cookie": f"s={SECRET}",
                         "proxy-authorization": SECRET})
    assert SECRET not in orjson.dumps(doc).decode()
    assert doc["request"]["headers"]["authorization"] == "Bearer [redacted]"  # the scheme stays
    assert doc["attributes"]["request"]["http"]["headers"]["authorization"] == "Bearer [redacted]"
    assert doc["attributes"]["request"]["http"]["headers"]["x-api-key"] == "[redacted]"
    assert doc["request"]["headers"]["proxy-authorization"] == "[redacted]"  # no scheme: nothing kept
    assert doc["request"]["headers"]["cookie"] == "[redacted]"


@pytest.mark.parametrize("value, shown", [
    ("Basic YWxpY2U6cGFzc3dvcmQ=", "Basic [redacted]"),
    ("bearer x", "bearer [redacted]"),
    ("Bearer", "[redacted]"),
    ("Be arer x", "Be [redacted]"),
    ("B\u00e9arer x", "[redacted]"),
    ("x" * 40 + " y", "[redacted]"),
])
def test_the_scheme_is_kept_only_when_it_is_a_token(value, shown):
    doc = build(headers={"authorization": value})
    assert doc["request"]["headers"]["authorization"] == shown


def test_raw_credentials_reach_the_policy_only_when_opted_in():
    facts = from_check_request(check_request(path="/people", body=b"", method="GET",
                                             headers={"authorization": f"Bearer {SECRET}", "x-api-key": SECRET}))
    doc = build_input(facts, None, extract_payload(facts, None), Identity(), None, raw_credentials=True)
    assert doc["request"]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert doc["attributes"]["request"]["http"]["headers"]["x-api-key"] == SECRET


def test_parsed_body_on_a_route_that_names_no_model():
    facts = from_check_request(check_request(path="/people", body={"firstname": "Charlie"}))
    doc = build_input(facts, None, extract_payload(facts, None), Identity(), None)
    assert doc["parsed_body"] == {"firstname": "Charlie"} and doc["payload"]["parsed"] is True
    assert doc["model"]["operation"] is None


def test_a_cut_short_body_is_not_parsed_and_says_so():
    facts = from_check_request(check_request(path="/people", body={"firstname": "Charlie"},
                                             headers={"content-length": "9999"}))
    doc = build_input(facts, None, extract_payload(facts, None), Identity(), None)
    assert doc["parsed_body"] is None and doc["truncated_body"] is True


def test_an_unreadable_json_body_on_any_route_is_a_payload_error():
    facts = from_check_request(check_request(path="/people", body=b'{"role": "user", "role": "admin"}'))
    payload = extract_payload(facts, None)
    assert payload.error == "duplicate_key" and payload.body is None


@pytest.mark.parametrize("path, parsed", [("/people", ["people"]), ("/people/", ["people", ""]), ("/", [""]),
                                          ("//a//b", ["a", "", "b"]), ("/a%2Fb/c", ["a", "b", "c"])])
def test_parsed_path_is_opa_envoys(path, parsed):
    facts = from_check_request(check_request(path=path, body=b"", method="GET"))
    assert build_input(facts, None, extract_payload(facts, None), Identity(), None)["parsed_path"] == parsed


def test_opa_envoy_fields():
    doc = build(path="/v2/models/fraud-scorer/versions/2/infer", body={"inputs": []})
    assert doc["parsed_path"] == ["v2", "models", "fraud-scorer", "versions", "2", "infer"]
    assert doc["request"]["path_segments"] == doc["parsed_path"]
    assert doc["parsed_body"] == {"inputs": []}
    assert doc["truncated_body"] is False
    assert doc["attributes"]["source"]["address"]["socketAddress"] == {"address": "10.0.0.7", "portValue": 40000}
    assert doc["attributes"]["request"]["http"]["method"] == "POST"
    assert doc["version"] == {"encoding": "protojson", "ext_authz": "v3"}
    assert doc["model"]["name"] == "fraud-scorer" and doc["model"]["version"] == "2"


def test_query_parsing():
    facts = from_check_request(check_request(path="/v1/chat/completions?a=1&a=2&b=", body={"model": "m"}))
    doc = build_input(facts, match_route("POST", facts.path), extract_payload(facts, None), Identity(), None)
    assert doc["parsed_query"] == {"a": ["1", "2"], "b": [""]}
    assert doc["request"]["path"] == "/v1/chat/completions"


def test_source_address_that_is_not_an_ip_is_null():
    facts = from_check_request(check_request(source="not-an-ip", body={"model": "m"}))
    assert facts.source_address is None


def test_committed_schema_is_up_to_date():
    committed = json.loads((REPO / "docs" / "input-v1.schema.json").read_text())
    assert committed == json.loads(orjson.dumps(json_schema())), "run `make schema` and commit docs/input-v1.schema.json"


def test_client_sent_service_headers_never_reach_request_headers():
    doc = build(headers={"x-llm-authz-tenant": "acme", "x-llm-authz-subject": "admin"})
    assert not any(k.startswith("x-llm-authz-") for k in doc["request"]["headers"])
    assert doc["identity"]["tenant"] is None


def test_credentials_in_the_query_string_never_reach_the_input():
    facts = from_check_request(check_request(path=f"/v1beta/models/g:generateContent?key={SECRET}&alt=sse&access_token={SECRET}",
                                             body={"contents": []}))
    doc = build_input(facts, match_route("POST", facts.path), extract_payload(facts, None), Identity(), None)
    assert SECRET not in orjson.dumps(doc).decode()
    assert doc["parsed_query"] == {"key": ["[redacted]"], "alt": ["sse"], "access_token": ["[redacted]"]}
    assert doc["attributes"]["request"]["http"]["path"].startswith("/v1beta/models/g:generateContent?key=")


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "application/x+json", "text/plain", ""]),
       length=st.one_of(st.none(), st.text(max_size=4)))
def test_any_body_on_any_route_is_answered_never_raised(body, content_type, length):
    headers = {"content-type": content_type, "content-length": length}
    facts = from_check_request(check_request(path="/people", body=body, headers=headers))
    payload = extract_payload(facts, None)
    doc = build_input(facts, None, payload, Identity(), None)
    assert (doc["parsed_body"] is not None) <= payload.parsed
    assert payload.parsed or payload.body is None


def test_a_non_ascii_content_length_is_not_a_length():
    facts = from_check_request(check_request(path="/people", body={"a": 1}, headers={"content-length": "\u00b2"}))
    doc = build_input(facts, None, extract_payload(facts, None), Identity(), None)
    assert doc["truncated_body"] is False and doc["parsed_body"] == {"a": 1}
