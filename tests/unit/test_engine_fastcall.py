"""The orjson fast call gives exactly what the bindings' public eval_document gives."""

from __future__ import annotations

from typing import Any

import pytest
from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from llm_authz.engine import fastcall

POLICY = """package t
import rego.v1

echo := input

big := 123456789012345678901234567890
neg := -9223372036854775809
frac := 0.1
sum := input.a + input.b
quotient := 1 / input.zero
cidr := net.cidr_contains("10.0.0.0/8", input.ip)
shout contains upper(s) if some s in input.words
"""


@pytest.fixture(scope="module")
def engine() -> Any:
    e = OpaEngine()
    e.add_policy("t.rego", POLICY)
    yield e
    e.close()


def _both(engine: OpaEngine, path: str, doc: Any) -> tuple[Any, Any]:
    def run(fn: Any) -> Any:
        try:
            return ("value", fn(engine, path, doc))
        except OpaUndefinedError as exc:
            return ("undefined", exc.code, exc.message)
        except OpaError as exc:
            return ("error", exc.code, exc.message)

    return run(fastcall.eval_document), run(lambda e, p, d: e.eval_document(p, d))


def test_the_fast_call_is_in_use() -> None:
    assert fastcall.available(), "the bindings changed version: re-check fastcall.py against them"


@pytest.mark.parametrize("doc", [
    {"s": "plain", "n": 1, "f": 1.5, "t": True, "z": None, "l": [1, "2", [3]], "o": {"k": {}}},
    {"unicode": "é ✓ 😀 \u0000 \"quoted\" \\ back", "ключ": "значение"},
    {"big": 2**70, "neg": -(2**70), "edge": 2**64, "edge2": 2**63 - 1, "small": -(2**63)},
    {"float": 1e300, "tiny": 5e-324, "neg0": -0.0, "digits": 0.1234567890123456789},
    [1, 2, 3],
    "a string",
    42,
    {},
    None,
])
def test_echo_round_trips_like_the_bindings(engine: OpaEngine, doc: Any) -> None:
    fast, slow = _both(engine, "t.echo", doc)
    assert fast == slow
    if doc is not None:
        assert fast[1] == doc


@pytest.mark.parametrize("path,doc", [
    ("t.big", None), ("t.neg", None), ("t.frac", None),
    ("t.sum", {"a": 2**62, "b": 2**62}),          # beyond int64 in the answer
    ("t.sum", {"a": 1, "b": "x"}),                # type error
    ("t.quotient", {"zero": 0}),                       # builtin error (strict)
    ("t.cidr", {"ip": "not an ip"}),
    ("t.cidr", {"ip": "10.1.2.3"}),
    ("t.shout", {"words": ["a", "b"]}),
    ("t.missing", {}),                            # undefined
    ("t.echo", None),                             # undefined: no input
    ("nope.nothing", {}),
])
def test_answers_and_errors_match(engine: OpaEngine, path: str, doc: Any) -> None:
    fast, slow = _both(engine, path, doc)
    assert fast == slow


def test_big_integers_are_exact(engine: OpaEngine) -> None:
    assert fastcall.eval_document(engine, "t.big", None) == 123456789012345678901234567890
    assert fastcall.eval_document(engine, "t.sum", {"a": 2**62, "b": 2**62}) == 2**63


def test_values_orjson_refuses_fall_back_to_the_bindings(engine: OpaEngine) -> None:
    # Lone surrogates are not UTF-8: the bindings refuse them, and so does the fast call.
    fast, slow = _both(engine, "t.echo", {"s": "\ud800"})
    assert fast == slow and fast[0] == "error" and fast[1] == "invalid_argument"
    # Non-string keys: json turns them into strings, and so does the fast call.
    assert fastcall.eval_document(engine, "t.echo", {1: "one"}) == {"1": "one"}


def test_a_nul_in_the_path_is_refused(engine: OpaEngine) -> None:
    with pytest.raises(OpaError) as err:
        fastcall.eval_document(engine, "t.echo\0x", {})
    assert err.value.code == "invalid_argument"


def test_a_closed_engine_raises() -> None:
    e = OpaEngine()
    e.add_policy("t.rego", POLICY)
    e.close()
    with pytest.raises(OpaError) as err:
        fastcall.eval_document(e, "t.echo", {})
    assert err.value.code == "closed"


def test_prints_go_through_the_bindings_handler() -> None:
    e = OpaEngine()
    e.add_policy("p.rego", "package p\nimport rego.v1\nr if { print(\"seen\", input.x); true }\n")
    seen: list[tuple[str, str]] = []
    e.print_handler = lambda message, location: seen.append((message, location))
    try:
        assert fastcall.eval_document(e, "p.r", {"x": 7}) is True
    finally:
        e.close()
    assert seen and seen[0][0] == "seen 7"
