"""The W3C traceparent header → the trace id an audit record and a log line carry."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llm_authz.tracing import trace_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_the_trace_id_of_a_valid_header() -> None:
    assert trace_id({"traceparent": VALID}) == TRACE
    assert trace_id({"traceparent": f"cc-{TRACE}-00f067aa0ba902b7-01-future-field"}) == TRACE


def test_no_header_or_an_invalid_one_gives_no_trace_id() -> None:
    for bad in ["", "00-" + TRACE + "-00f067aa0ba902b7", VALID.upper(), "ff" + VALID[2:],
                f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-{TRACE}-{'0' * 16}-01", VALID + "-extra",
                f"00-{TRACE[:-1]}g-00f067aa0ba902b7-01"]:
        assert trace_id({"traceparent": bad}) is None, bad
    assert trace_id({}) is None


@given(st.text(max_size=600))
def test_any_header_value_gives_a_32_hex_id_or_none(value: str) -> None:
    found = trace_id({"traceparent": value})
    assert found is None or (len(found) == 32 and found in value and int(found, 16) > 0)


@given(st.from_regex(r"[0-9a-f]{32}", fullmatch=True), st.from_regex(r"[0-9a-f]{16}", fullmatch=True))
def test_every_well_formed_header_gives_its_trace_id(trace: str, parent: str) -> None:
    expected = trace if int(trace, 16) and int(parent, 16) else None
    assert trace_id({"traceparent": f"00-{trace}-{parent}-01"}) == expected


def test_an_exported_decision_event_carries_the_trace_id() -> None:
    from llm_authz.audit.export import opa_event

    base = {"decision_id": "d", "policy": {"revision": "r", "entrypoint": "data.llm.authz.decision"}, "input": {}}
    assert opa_event({**base, "trace_id": TRACE})["trace_id"] == TRACE
    assert "trace_id" not in opa_event({**base, "trace_id": None})
