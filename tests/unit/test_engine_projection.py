"""Input projection: the engine sees only what the policies can read, and never less."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_authz.engine.embedded import EmbeddedEngine, _projection
from llm_authz.engine.projection import describe, project, spec_from_paths
from llm_authz.policy import read_modules

REPO = Path(__file__).resolve().parents[2]


def paths(source: str) -> list[str]:
    return describe(_projection({"p.rego": "package p\nimport rego.v1\n" + source}))


def test_the_default_policy_reads_a_few_fields() -> None:
    spec = _projection(read_modules(REPO / "policies" / "rego"))
    assert describe(spec) == [
        "identity.authenticated", "identity.error", "identity.method", "identity.scopes", "identity.tenant",
        "model.name", "model.operation",
        "payload.bytes", "payload.error", "payload.max_tokens", "payload.truncated",
        "quota.buckets", "signals.baseline.established", "signals.baseline.score", "signals.concurrency.networks",
        "signals.network.asn", "signals.network.country", "signals.network.last", "signals.network.recent.countries",
        "source.address", "tenant.hint",
    ]


@pytest.mark.parametrize("source", [
    "r if input[x] == 1",                      # dynamic first step
    "r if walk(input, [p, v])",                # input as an argument
    "r := input",                              # input as a value
    "r := count(input)",
    "r if { x := input; x.a }",
    "r if data.q.s with input as {\"a\": 1}",  # with input as ...
    "r if { some k, v in input }",
    "r := json.marshal(input)",
    "r := object.get(input, [\"a\", \"b\"], 0)",
    "r := [v | v := input[_]]",
])
def test_input_used_whole_sends_everything(source: str) -> None:
    assert paths(source) == ["(whole input)"]


@pytest.mark.parametrize("source,expected", [
    ("r if input.a.b == 1", ["a.b"]),
    ("r if input.a[x] == 1", ["a"]),                              # dynamic step: the subtree before it
    ("r if input[\"a\"].b", ["a.b"]),                             # a string key is a static step
    ("r if input.a[0]", ["a"]),                                   # a number is not a key
    ("r if { input.a.b; input.a }", ["a"]),                       # the whole subtree absorbs a deeper path
    ("r if { input.x.y.z; input.x.w }", ["x.w", "x.y.z"]),
    ("r := object.get(input.a, \"b\", 0)", ["a"]),
    ("r if input.a.b[input.c.d]", ["a.b", "c.d"]),                # refs inside dynamic steps count too
    ("r if { some v in input.list; v > 1 }", ["list"]),
    ("r := 1", []),
])
def test_static_paths(source: str, expected: list[str]) -> None:
    assert paths(source) == expected


def test_imports_of_input_keep_the_imported_subtree() -> None:
    spec = _projection({"p.rego": "package p\nimport rego.v1\nimport input.identity as who\nr if who.x.y\n"})
    assert describe(spec) == ["identity"]


def test_every_module_counts() -> None:
    spec = _projection({
        "a.rego": "package a\nimport rego.v1\nr if input.a",
        "b.rego": "package b\nimport rego.v1\nr if input.b.c",
    })
    assert describe(spec) == ["a", "b.c"]


def test_a_module_that_does_not_parse_sends_everything() -> None:
    assert _projection({"p.rego": "package p\nr { input.a }\n"}) is None  # Rego v0 syntax


def test_project_keeps_only_the_spec() -> None:
    spec = spec_from_paths([("a", "b"), ("c",), ("l", "x")])
    doc = {"a": {"b": {"deep": 1}, "other": 2}, "c": [1, 2], "d": "gone", "l": [{"x": 1}]}
    assert project(doc, spec) == {"a": {"b": {"deep": 1}}, "c": [1, 2], "l": [{"x": 1}]}
    assert project({"a": "not an object"}, spec) == {"a": "not an object"}
    assert project({}, spec) == {}
    assert project(None, spec) is None
    assert project([1], spec) == [1]
    assert project(doc, None) is doc


def test_missing_values_stay_undefined() -> None:
    engine = EmbeddedEngine({"p.rego": "package p\nimport rego.v1\nr if not input.a.b\ns if input.a\n"}, {})
    try:
        assert engine.evaluate("data.p.r", {"a": {"c": 1}}) is True
        assert engine.evaluate("data.p.s", {"a": {"c": 1}}) is True
    finally:
        engine.close()


def test_projection_can_be_turned_off() -> None:
    engine = EmbeddedEngine({"p.rego": "package p\nimport rego.v1\nr := input.a"}, {}, project_input=False)
    try:
        assert engine.projection is None
    finally:
        engine.close()
