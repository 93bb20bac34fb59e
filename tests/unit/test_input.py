"""The input document matches its documented schema and never carries a credential."""

import json
from pathlib import Path

import orjson

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
    assert doc["request"]["headers"]["authorization"] == "[redacted]"
    assert doc["attributes"]["request"]["http"]["headers"]["x-api-key"] == "[redacted]"


def test_opa_envoy_fields():
    doc = build(path="/v2/models/fraud-scorer/versions/2/infer", body={"inputs": []})
    assert doc["parsed_path"] == ["v2", "models", "fraud-scorer", "versions", "2", "infer"]
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
