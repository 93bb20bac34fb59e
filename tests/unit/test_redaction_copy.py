"""Redacting for the audit log copies only what it changes, and never touches the input the policy saw."""

from __future__ import annotations

import copy

from llm_authz.audit.redaction import REDACTED, redact_input


def _doc() -> dict:
    return {
        "request": {"headers": {"x-user": "u1", "authorization": "[redacted]"}},
        "parsed_body": {"messages": [{"role": "user", "content": "secret prompt"}]},
        "attributes": {
            "request": {"http": {"headers": {"x-user": "u1"}, "body": '{"content": "secret prompt"}',
                                 "rawBody": "c2VjcmV0"}, "time": "t"},
            "source": {"address": {"socketAddress": {"address": "10.0.0.1"}}},
        },
    }


def test_body_and_prompt_are_redacted_in_the_copy_only() -> None:
    doc = _doc()
    before = copy.deepcopy(doc)
    out, masked = redact_input(doc)
    assert doc == before  # the policy's input is untouched
    assert out["parsed_body"] == REDACTED
    assert out["attributes"]["request"]["http"]["body"] == REDACTED
    assert out["attributes"]["request"]["http"]["rawBody"] == REDACTED
    assert out["attributes"]["request"]["http"]["headers"] == {"x-user": "u1"}
    assert out["attributes"]["source"] == doc["attributes"]["source"]
    assert masked == ["/parsed_body", "/attributes/request/http/body", "/attributes/request/http/rawBody"]
    assert "secret prompt" not in repr(out)


def test_masks_do_not_reach_the_original() -> None:
    doc = _doc()
    before = copy.deepcopy(doc)
    out, masked = redact_input(doc, ("/attributes/request/http/headers/x-user", "/attributes/source/address"))
    assert doc == before
    assert out["attributes"]["request"]["http"]["headers"]["x-user"] == REDACTED
    assert out["attributes"]["source"]["address"] == REDACTED
    assert "/attributes/source/address" in masked


def test_odd_attributes_are_copied_whole() -> None:
    for attributes in ({}, {"request": "not an object"}, {"request": {"http": None}}, []):
        doc = {"attributes": attributes}
        out, _ = redact_input(doc)
        assert out["attributes"] == attributes
