"""Input projection: the engine sees only what the policies can read, and never less."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_authz.engine.embedded import EmbeddedEngine, _projection
from llm_authz.engine.projection import EACH, describe, project, spec_from_paths
from llm_authz.errors import PolicyError
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
        "quota.buckets[*].available", "quota.buckets[*].cost", "signals.baseline.established", "signals.baseline.score", "signals.concurrency.networks",
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


@pytest.mark.parametrize("source,expected", [
    ("r if { some b in input.q.bs; b.cost > 1 }", ["q.bs[*].cost"]),
    ("r if { some i, b in input.q.bs; b.x.y == i }", ["q.bs[*].x.y"]),
    ("r := [b.c | some b in input.q.bs]", ["q.bs[*].c"]),
    ("r contains b.name if some b in input.q.bs", ["q.bs[*].name"]),
    ("r if { some b in input.q.bs; some c in input.q.cs; b.a == c.a }", ["q.bs[*].a", "q.cs[*].a"]),
    ("r if { some b in input.q.bs; b.a; input.q.bs.n }", ["q.bs[*].a", "q.bs.n"]),
])
def test_members_read_only_by_static_keys_are_cut_to_those_keys(source: str, expected: list[str]) -> None:
    assert paths(source) == expected


@pytest.mark.parametrize("source", [
    "r if { some b in input.q.bs; b == {\"a\": 1} }",                 # the member as a value
    "r if { some b in input.q.bs; f(b) }\nf(x) := x.a",               # passed to a function
    "r if { some b in input.q.bs; some k; b[k] == 1 }",               # a dynamic key
    "r if { some b in input.q.bs; x := b; x.a }",                     # an alias
    "r if { some b in input.q.bs; b in input.q.cs }",                 # a membership test: bound twice
    "r if { some b in input.q.bs; b.a }\ns if { some b in input.q.cs; b.c }",  # one name, two bindings
    "r if { some b in input.q.bs; b.a; input.q.bs[0] }",              # the collection read another way
    "r if every b in input.q.bs { b.a }",                             # every: not a some binding
    "r if { x := input.q.bs[_]; x.a }",
    "r if { some b in input.q.bs; print(b) }",
    "r contains b if some b in input.q.bs",                           # the member in the rule head
])
def test_members_used_any_other_way_stay_whole(source: str) -> None:
    kept = paths(source)
    assert not any("[*]" in p for p in kept), kept
    assert any(p.startswith("q.bs") or p == "q" for p in kept), kept


def test_members_of_an_object_are_cut_and_its_own_keys_kept_whole() -> None:
    spec = spec_from_paths([("q", "bs", EACH, "a"), ("q", "bs", "k")])
    doc = {"q": {"bs": {"k": {"a": 1, "z": 2}, "j": {"a": 3, "z": 4}}, "other": 1}}
    assert project(doc, spec) == {"q": {"bs": {"k": {"a": 1, "z": 2}, "j": {"a": 3}}}}
    assert project({"q": {"bs": [{"a": 1, "z": 2}, 5, [{"a": 1}]]}}, spec) == {"q": {"bs": [{"a": 1}, 5, [{"a": 1}]]}}
    assert project({"q": {"bs": "text"}}, spec) == {"q": {"bs": "text"}}


# Policies reading members in every way the projection distinguishes: each decision must be the
# same with the projection as with the whole input, whatever the members hold.
_MEMBER_POLICY = """package p
import rego.v1
cut contains m1.a if some m1 in input.q.bs
cut_pairs contains [i, m2.c.d] if some i, m2 in input.q.cs
deep if { some m3 in input.q.ds; m3.x.y > 1 }
whole_value contains m4 if { some m4 in input.q.es; m4 != 1 }
twice if { some m5 in input.q.fs; m5.a; m5 in input.q.gs }
by_key contains v if { some m6 in input.q.hs; some k; v := m6[k] }
also_indexed if { some m7 in input.q.is; m7.a; input.q.is[0].z }
mixed contains m8 if { some m8 in input.q.js; m8.a }
compared if { some m9 in input.q.ks; m9.a; m9 == {"a": 1} }
"""
_MEMBER = st.one_of(
    st.integers(-3, 3), st.text(max_size=3), st.none(),
    st.dictionaries(st.sampled_from(["a", "c", "x", "z"]),
                    st.one_of(st.integers(-3, 3), st.dictionaries(st.sampled_from(["d", "y"]), st.integers(-3, 3), max_size=2)),
                    max_size=3),
)
_COLLECTION = st.one_of(st.lists(_MEMBER, max_size=3), st.dictionaries(st.sampled_from(["k", "a"]), _MEMBER, max_size=2),
                        _MEMBER)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional={name: _COLLECTION for name in ("bs", "cs", "ds", "es", "fs", "gs", "hs", "is", "js", "ks")}))
def test_member_projection_decides_as_the_whole_input(collections: dict) -> None:
    doc = {"q": collections, "other": {"bs": [{"a": 1}]}}
    results = []
    for projected in (True, False):
        engine = _member_engine(projected)
        row = {}
        for rule in ("cut", "cut_pairs", "deep", "whole_value", "twice", "by_key", "also_indexed", "mixed", "compared"):
            try:
                row[rule] = engine.evaluate(f"data.p.{rule}", doc)
            except PolicyError as exc:
                row[rule] = ("error", str(exc))
        results.append(row)
    assert results[0] == results[1]


_ENGINES: dict[bool, EmbeddedEngine] = {}


def _member_engine(projected: bool) -> EmbeddedEngine:
    if projected not in _ENGINES:
        _ENGINES[projected] = EmbeddedEngine({"p.rego": _MEMBER_POLICY}, {}, project_input=projected)
    return _ENGINES[projected]


def test_the_member_policy_is_projected() -> None:
    assert describe(_member_engine(True).projection) == [
        "q.bs[*].a", "q.cs[*].c.d", "q.ds[*].x.y", "q.es", "q.fs", "q.gs", "q.hs", "q.is", "q.js", "q.ks"]
