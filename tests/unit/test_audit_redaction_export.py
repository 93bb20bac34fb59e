"""Masks (validated JSON pointers, recorded in the record) and the OPA decision-log export."""

from __future__ import annotations

import orjson
import pytest

from llm_authz.audit.export import opa_event, query_path
from llm_authz.audit.redaction import REDACTED, MaskError, normalize_masks, redact_input
from llm_authz.cli import main
from llm_authz.config import load_config
from llm_authz.errors import ConfigError
from tests.unit.audit_logs import REVISION, make_log


def doc() -> dict:
    return {
        "request": {"headers": {"x-user-email": "a@example.com", "authorization": REDACTED}, "path": "/v1/x"},
        "identity": {"claims": {"email": "a@example.com", "sub": "u1"}},
        "attributes": {"request": {"http": {"headers": {"x-user-email": "a@example.com"},
                                            "body": '{"messages":[{"content":"secret prompt"}]}'}}},
        "parsed_body": {"messages": [{"content": "secret prompt"}]},
        "payload": {"tools": ["a", "b"]},
    }


def test_prompt_text_is_always_redacted():
    out, masked = redact_input(doc())
    assert "secret prompt" not in orjson.dumps(out).decode()
    assert masked == ["/parsed_body", "/attributes/request/http/body"]


def test_masks_replace_values_and_are_listed():
    masks = normalize_masks(["/input/identity/claims/email", "/request/headers/x-user-email", "/payload/tools/1",
                             "/not/there"])
    source = doc()
    out, masked = redact_input(source, masks)
    assert out["identity"]["claims"] == {"email": REDACTED, "sub": "u1"}
    assert out["request"]["headers"]["x-user-email"] == REDACTED
    assert out["attributes"]["request"]["http"]["headers"]["x-user-email"] == REDACTED  # the other copy too
    assert out["payload"]["tools"] == ["a", REDACTED]
    assert "a@example.com" not in orjson.dumps(out).decode()
    assert masked[2:] == ["/identity/claims/email", "/request/headers/x-user-email",
                          "/attributes/request/http/headers/x-user-email", "/payload/tools/1"]
    assert source["identity"]["claims"]["email"] == "a@example.com"  # the policy's input is untouched


@pytest.mark.parametrize("bad", ["identity/claims", "/", "/input", "/a//b", "/a~2b", ""])
def test_a_mask_that_is_not_a_pointer_is_refused(bad):
    with pytest.raises(MaskError):
        normalize_masks([bad])


def test_pointer_escapes():
    assert normalize_masks(["/request/headers/a~1b~0c"]) == ("/request/headers/a~1b~0c",
                                                             "/attributes/request/http/headers/a~1b~0c")
    out, masked = redact_input({"request": {"headers": {"a/b~c": "v"}}}, ("/request/headers/a~1b~0c",))
    assert out["request"]["headers"]["a/b~c"] == REDACTED and masked == ["/request/headers/a~1b~0c"]


def test_the_config_refuses_a_bad_mask(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("audit_masks: ['identity/claims/email']\n")
    with pytest.raises(ConfigError, match="audit_masks"):
        load_config(path)
    path.write_text("audit_masks: ['/input/identity/claims/email']\n")
    assert load_config(path).audit_masks == ["/identity/claims/email"]


def test_opa_event_fields():
    record = {"seq": 7, "time": "2026-01-01T00:00:00.000000Z", "decision_id": "d-1", "request_id": "r-1",
              "policy": {"revision": REVISION, "entrypoint": "data.llm.authz.decision"}, "engine": "embedded",
              "input": {"a": 1}, "masked": ["/parsed_body"], "result": {"allow": True}, "allowed": True,
              "status": 200, "reasons": [], "tenant": "acme", "subject": "s", "model": "gpt-4o",
              "latency_us": 250, "dry_run": False, "kind": "decision", "prev_hash": "0" * 64, "hash": "1" * 64}
    event = opa_event(record)
    assert event["decision_id"] == "d-1" and event["path"] == "llm/authz/decision"
    assert event["input"] == {"a": 1} and event["result"] == {"allow": True}
    assert event["timestamp"] == record["time"] and event["bundles"] == {"llm-authz": {"revision": REVISION}}
    assert event["labels"]["id"] == "llm-authz" and event["masked"] == ["/parsed_body"]
    assert event["metrics"] == {"timer_server_handler_ns": 250_000} and event["req_id"] == 7
    assert event["custom"]["allowed"] is True and event["custom"]["hash"] == "1" * 64
    assert query_path("data.x.y") == "x/y"


def test_export_command_writes_one_event_per_decision(tmp_path, capsys):
    make_log(tmp_path / "audit", 12)
    assert main(["audit", "export", "--format", "opa", str(tmp_path / "audit")]) == 0
    events = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["decision_id"] for e in events] == [f"d-{i}" for i in range(12)]
    assert main(["audit", "export", "-o", str(tmp_path / "out.jsonl"), str(tmp_path / "audit")]) == 0
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 12


def test_a_header_mask_given_by_its_opa_envoy_path_masks_both_copies():
    assert normalize_masks(["/input/attributes/request/http/headers/x-user-email"]) == (
        "/attributes/request/http/headers/x-user-email", "/request/headers/x-user-email")


def test_masking_the_whole_input_is_refused_with_the_reason():
    with pytest.raises(MaskError) as refused:
        normalize_masks(["/input"])
    assert str(refused.value) == "'/input' would mask the whole input: name the fields to mask"


POINTER = "a mask is a JSON pointer such as /request/headers/x-user-email"


@pytest.mark.parametrize("bad, why", [
    ("identity/claims", f"'identity/claims': {POINTER}"), ("/", f"'/': {POINTER}"), ("", f"'': {POINTER}"),
    (5, f"5: {POINTER}"), ("/a//b", "'/a//b': empty segment"), ("/a/", "'/a/': empty segment"),
    ("/a~2b", "'/a~2b': '~' must be written ~0 (and '/' as ~1)"), ("/a~", "'/a~': '~' must be written ~0 (and '/' as ~1)"),
])
def test_a_refused_mask_says_why(bad, why):
    """The operator reads this when the service refuses its config."""
    with pytest.raises(MaskError) as refused:
        normalize_masks([bad])
    assert str(refused.value) == why


def test_masks_reach_into_lists_by_index_only_within_them():
    source = {"payload": {"tools": ["a", "b"], "nested": [{"k": "v"}, {"k": "w"}]}}
    out, masked = redact_input(source, normalize_masks(["/payload/tools/0", "/payload/nested/1/k", "/payload/tools/2",
                                                        "/payload/tools/x", "/payload/nested/5/k", "/payload/nested/2/k",
                                                        "/payload/tools/0/z"]))
    assert out["payload"] == {"tools": [REDACTED, "b"], "nested": [{"k": "v"}, {"k": REDACTED}]}
    assert masked == ["/payload/tools/0", "/payload/nested/1/k"]
    assert source["payload"]["nested"][1]["k"] == "w"


def test_a_mask_given_twice_or_as_both_header_copies_is_listed_once():
    assert normalize_masks(["/request/headers/x-a", "/input/attributes/request/http/headers/x-a",
                            "/request/headers/x-a"]) == ("/request/headers/x-a", "/attributes/request/http/headers/x-a")
