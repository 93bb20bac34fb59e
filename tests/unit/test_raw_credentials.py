"""Raw credentials for OPA-Envoy policies: the policy may see them, the audit record never does,
and replay knows which decisions the redacted record cannot reproduce."""

from llm_authz.audit.redaction import redact_input, scrub_credentials
from llm_authz.config import Config
from llm_authz.engine.embedded import EmbeddedEngine
from llm_authz.facts.payload import extract_payload
from llm_authz.facts.request import from_check_request
from llm_authz.identity.model import Identity
from llm_authz.input import build_input
from llm_authz.replay.determinism import reads_masked_input
from tests.helpers import check_request

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiZ3Vlc3QifQ.c2lnbmF0dXJl"


def raw_doc():
    facts = from_check_request(check_request(path="/people", method="GET", body=b"",
                                             headers={"authorization": f"Bearer {TOKEN}", "x-api-key": "k-123456"}))
    return build_input(facts, None, extract_payload(facts, None), Identity(), None, raw_credentials=True)


def test_the_record_redacts_raw_credentials_and_lists_them_as_masked():
    doc = raw_doc()
    logged, masked = redact_input(doc, (), raw_credentials=True)
    assert TOKEN not in str(logged) and "k-123456" not in str(logged)
    assert logged["request"]["headers"]["authorization"] == "Bearer [redacted]"
    assert logged["attributes"]["request"]["http"]["headers"]["authorization"] == "Bearer [redacted]"
    assert {"/request/headers/authorization", "/attributes/request/http/headers/authorization",
            "/request/headers/x-api-key", "/attributes/request/http/headers/x-api-key"} <= set(masked)
    assert doc["request"]["headers"]["authorization"] == f"Bearer {TOKEN}"  # the policy's copy is untouched


def test_a_result_that_echoes_a_credential_is_scrubbed():
    result = {"allowed": True, "headers": {"x-token": TOKEN, "x-who": "alice"}, "dynamic_metadata": {"t": [TOKEN]}}
    scrubbed = scrub_credentials(result, raw_doc())
    assert TOKEN not in str(scrubbed) and scrubbed["headers"]["x-who"] == "alice"


def raw_doc_with(headers):
    facts = from_check_request(check_request(path="/people", method="GET", body=b"", headers=headers))
    return build_input(facts, None, extract_payload(facts, None), Identity(), None, raw_credentials=True)


def test_every_item_of_a_list_is_scrubbed_and_the_rest_kept():
    result = {"dynamic_metadata": {"t": [TOKEN, "alice", f"Bearer {TOKEN}"]}}
    assert scrub_credentials(result, raw_doc())["dynamic_metadata"]["t"] == ["[redacted]", "alice", "[redacted]"]


def test_a_credential_with_spaces_after_its_scheme_is_scrubbed_whole():
    """AWS SigV4 / Digest-style values: everything after the scheme is the credential."""
    params = "Credential=AKIDEXAMPLE/20261202/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=fe5f80f7"
    doc = raw_doc_with({"authorization": f"AWS4-HMAC-SHA256 {params}"})
    assert scrub_credentials({"x": params}, doc) == {"x": "[redacted]"}


def test_a_four_character_key_is_still_a_secret():
    assert scrub_credentials({"x": "key=k9Zq"}, raw_doc_with({"x-api-key": "k9Zq"})) == {"x": "key=[redacted]"}


def test_only_credential_values_are_scrubbed_from_a_result():
    """Other header values the result repeats (host, request id) are kept as the policy gave them."""
    result = {"headers": {"x-host": "api.example", "x-request": "req-1", "x-scheme": "Bearer"}}
    assert scrub_credentials(result, raw_doc()) == result


def test_replay_flags_a_policy_that_reads_credentials_and_not_one_that_reads_identity():
    _, masked = redact_input(raw_doc(), (), raw_credentials=True)
    reads_headers = EmbeddedEngine({"p.rego": "package p\nimport rego.v1\n"
                                    "allow if startswith(input.attributes.request.http.headers.authorization, \"Bearer\")\n"}, {})
    reads_identity = EmbeddedEngine({"p.rego": "package p\nimport rego.v1\nallow if input.identity.authenticated\n"}, {})
    try:
        assert "/attributes/request/http/headers/authorization" in reads_masked_input(reads_headers.projection, masked)
        assert reads_masked_input(reads_identity.projection, masked) == []
    finally:
        reads_headers.close()
        reads_identity.close()


def test_the_opt_in_is_global_or_per_entrypoint():
    assert not Config().raw_credentials_for("data.llm.authz.decision")
    assert Config(raw_credentials=True).raw_credentials_for("data.anything")
    per = Config(raw_credentials=["data.envoy.authz.allow"])
    assert per.raw_credentials_for("data.envoy.authz.allow") and not per.raw_credentials_for("data.llm.authz.decision")


def test_only_credential_headers_are_redacted_in_the_record():
    doc = raw_doc_with({"authorization": f"Bearer {TOKEN}", "x-request-id": "req-1", "user-agent": "curl/8"})
    logged, masked = redact_input(doc, (), raw_credentials=True)
    for headers in (logged["request"]["headers"], logged["attributes"]["request"]["http"]["headers"]):
        assert headers["x-request-id"] == "req-1" and headers["user-agent"] == "curl/8"
    assert not [pointer for pointer in masked if "x-request-id" in pointer or "user-agent" in pointer]


def test_each_copy_of_the_headers_is_redacted_even_when_the_other_is_missing():
    """The record never keeps a credential, whatever shape of input it is given."""
    only_attributes = {"request": {}, "attributes": {"request": {"http": {"headers": {"x-api-key": "k-123456"}}}}}
    logged, masked = redact_input(only_attributes, (), raw_credentials=True)
    assert logged["attributes"]["request"]["http"]["headers"]["x-api-key"] == "[redacted]"
    assert masked == ["/attributes/request/http/headers/x-api-key"]
    only_request = {"request": {"headers": {"x-api-key": "k-123456"}}}
    logged, masked = redact_input(only_request, (), raw_credentials=True)
    assert logged["request"]["headers"]["x-api-key"] == "[redacted]" and masked == ["/request/headers/x-api-key"]


def test_a_result_is_kept_as_it_is_when_the_input_names_no_headers():
    result = {"allowed": True, "headers": {"x-who": "alice"}}
    for doc in ({}, {"request": {}}, {"request": {"headers": None}}):
        assert scrub_credentials(result, doc) == result


# ---- through the Checker: the record keeps no credential, whatever the policy does with it ----------

def test_a_checker_with_raw_credentials_records_neither_the_credential_nor_a_result_that_echoes_it(tmp_path):
    from pathlib import Path

    from llm_authz.check import Checker, CheckSettings
    from llm_authz.runtime import load_snapshot

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "p.rego").write_text('package llm.authz\nimport rego.v1\n'
                                           'decision := {"allow": true, "headers": {"x-token": input.request.headers.authorization}}\n')
    snapshot = load_snapshot(Config(policies=tmp_path / "p", tenants=repo / "tenants"))
    key = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"

    class Sink:
        records: list = []

        def append(self, record):
            self.records.append(record)

    sink = Sink()
    settings = CheckSettings(raw_credentials=True, audit_masks=("/request/headers/x-user-email",
                                                                "/attributes/request/http/headers/x-user-email"))
    request = check_request(headers={"authorization": f"Bearer {key}", "x-user-email": "a@example.com"},
                            body={"model": "gpt-4o", "messages": []})
    response = Checker(snapshot, audit=sink, settings=settings).check(request)
    upstream = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert upstream["x-token"] == f"Bearer {key}"  # the policy saw the raw header and used it
    record = sink.records[0]
    assert key not in str(record) and "a@example.com" not in str(record)
    assert record["result"]["headers"]["x-token"] == "[redacted]"
    assert record["input"]["request"]["headers"]["authorization"] == "Bearer [redacted]"
    assert {"/request/headers/authorization", "/request/headers/x-user-email"} <= set(record["masked"])
    snapshot.revision.close()
