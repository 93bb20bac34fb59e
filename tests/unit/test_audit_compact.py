"""Decision records keep the input without OPA-Envoy's copies; replay and export rebuild them exactly."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_authz.audit import compact
from llm_authz.audit.export import opa_event
from llm_authz.check import Checker
from llm_authz.config import Config
from llm_authz.runtime import load_snapshot

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from workload import chat_body, check_request  # noqa: E402


class Capture:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def append(self, record: dict) -> None:
        self.records.append(record)


def captured(requests) -> list[dict]:
    """Records of real checks (the default policy, the example tenants, the embedded engine)."""
    config = Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants")
    sink = Capture()
    checker = Checker(load_snapshot(config), sink)
    for request in requests:
        checker.check(request)
    return sink.records


def canonical(value) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_a_real_record_drops_the_copies_and_expands_to_what_the_policy_saw():
    with_query = check_request()
    with_query.attributes.request.http.path = "/v1/chat/completions?api-version=2024-06-01"
    with_query.attributes.request.http.headers[":path"] = with_query.attributes.request.http.path
    bare = check_request(body=chat_body(200))
    bare.attributes.request.http.ClearField("host")  # no host from Envoy: the field stays absent
    records = captured([check_request(), check_request("sk-llm-nope"), with_query, bare])
    full = captured([check_request()])[0]
    first = records[0]
    assert first["input_form"] == compact.FORM and "input_absent" not in first
    http = first["input"]["attributes"]["request"]["http"]
    assert set(http) == {"body"}  # headers, id, method, path, host... all rebuilt from input.request
    assert "parsed_path" not in first["input"] and "version" not in first["input"]
    assert "destination" in first["input"]["attributes"]  # not derivable: kept
    expanded = compact.full_input(first)
    assert expanded["attributes"]["request"]["http"]["headers"][":path"] == "/v1/chat/completions"
    assert expanded["attributes"]["request"]["http"]["headers"]["authorization"] == "Bearer [redacted]"  # the scheme stays
    assert expanded["parsed_path"] == ["v1", "chat", "completions"]
    # Smaller by what OPA-Envoy's copy held.
    before = len(canonical({**first, "input": expanded}))
    assert len(canonical(first)) < before * 0.8
    # The path with a query keeps its own path; a field Envoy did not send is not invented.
    q = records[2]
    assert q["input"]["attributes"]["request"]["http"]["path"] == "/v1/chat/completions?api-version=2024-06-01"
    assert compact.full_input(q)["attributes"]["request"]["http"]["headers"][":path"].endswith("2024-06-01")
    b = records[3]
    assert "/attributes/request/http/host" in b["input_absent"]
    assert "host" not in compact.full_input(b)["attributes"]["request"]["http"]
    # Every record expands to exactly the input the policy was given (after masking).
    for rec in records:
        assert canonical(compact.full_input(rec)) == canonical(compact.expand(*compact.compact(
            compact.full_input(rec))))
    assert set(full) == set(first)
    # The OPA decision-log event carries the whole input, as OPA-Envoy would log it.
    assert canonical(opa_event(first)["input"]) == canonical(expanded)


def test_records_without_input_form_are_taken_as_they_are():
    old = {"input": {"request": {"path": "/x"}, "attributes": {"request": {"http": {}}}}}
    assert compact.full_input(old) == old["input"]
    assert compact.full_input({"input": None, "input_form": compact.FORM}) is None


_text = st.text(max_size=6)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), _text)
_headers = st.dictionaries(st.sampled_from(["a", "b", ":path", "x-request-id", "host"]), _text, max_size=4)


@st.composite
def inputs(draw):
    """Input documents shaped like build_input's, whose copies agree with the facts or not."""
    request = {"id": draw(_text), "time": draw(_text), "method": draw(_text), "scheme": draw(_text),
               "host": draw(_text), "path": draw(_text), "path_segments": draw(st.lists(_text, max_size=3)),
               "query": draw(st.dictionaries(_text, st.lists(_text, max_size=2), max_size=2)),
               "headers": draw(_headers), "protocol": draw(_text)}
    for key in draw(st.lists(st.sampled_from(sorted(request)), max_size=2, unique=True)):
        del request[key]
    doc = {"request": request, "source": {"address": draw(st.one_of(st.none(), _text)), "port": draw(st.integers(0, 9))},
           "payload": {"truncated": draw(st.booleans()), "bytes": draw(st.integers(0, 99))}}
    http = {}
    for key, derive in [("id", "id"), ("method", "method"), ("host", "host"), ("scheme", "scheme"),
                        ("protocol", "protocol"), ("path", "path")]:
        choice = draw(st.sampled_from(["same", "other", "absent"]))
        if choice == "same" and derive in request:
            http[key] = request[derive]
        elif choice == "other":
            http[key] = draw(_scalar)
    if draw(st.booleans()):
        http["size"] = str(doc["payload"]["bytes"]) if draw(st.booleans()) else draw(_text)
    if draw(st.booleans()):
        try:
            http["headers"] = compact._headers({"request": request, "attributes": {"request": {"http": http}}})
        except (KeyError, TypeError):
            http["headers"] = draw(_headers)
        if draw(st.booleans()):
            http["headers"] = {**http["headers"], **draw(_headers)}
    attributes = {"request": {"http": http}}
    if draw(st.booleans()):
        attributes["request"]["time"] = request.get("time", "t") if draw(st.booleans()) else draw(_scalar)
    if draw(st.booleans()):
        attributes["source"] = {"address": {"socketAddress": {"address": doc["source"]["address"],
                                                              "portValue": doc["source"]["port"]}}}
        if draw(st.booleans()):
            attributes["source"]["address"]["socketAddress"]["portValue"] = True  # not the int 1
    doc["attributes"] = attributes
    for key, value in [("parsed_path", request.get("path_segments")), ("parsed_query", request.get("query")),
                       ("truncated_body", doc["payload"]["truncated"]),
                       ("version", {"encoding": "protojson", "ext_authz": "v3"})]:
        choice = draw(st.sampled_from(["same", "other", "absent"]))
        if choice == "same" and value is not None:
            doc[key] = value
        elif choice == "other":
            doc[key] = draw(_scalar)
    return doc


@settings(max_examples=200, deadline=None)
@given(inputs())
def test_expand_rebuilds_exactly_what_compact_dropped(doc):
    original = copy.deepcopy(doc)
    stored, absent = compact.compact(doc)
    assert doc == original  # the input the policy saw is not changed
    rebuilt = compact.full_input({"input": orjson.loads(orjson.dumps(stored)), "input_form": compact.FORM,
                                  "input_absent": absent})
    assert canonical(rebuilt) == canonical(original)
