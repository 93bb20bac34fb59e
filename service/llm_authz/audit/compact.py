"""The logged input without what it repeats: OPA-Envoy's copies rebuilt from llm-authz's own facts.

The input document carries the request twice: llm-authz's fields (`request`, `source`, `payload`)
and, so that OPA-Envoy policies run unchanged, Envoy's `attributes` in protojson names plus
`parsed_path`, `parsed_query`, `truncated_body` and `version`. In a decision record the second copy
is about a third of the bytes. `compact` drops each field of that copy whose value is exactly what
`DERIVED` rebuilds from the rest; `expand` rebuilds them, in the same order, from the same fields,
so the expanded input is equal to the logged one, value for value, and replay evaluates exactly
what the policy saw (the record's hash covers the compact form).

A field that differs from its derivation (a query string in the path, a header Envoy sent in
another form, a missing peer address) is kept as it was. A derivable field that the original did
not have at all is named in the record's `input_absent`, so that `expand` does not add it.
Records without `input_form` (written before compaction) are full already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

FORM = "compact/v1"  # the record's `input_form` when its input is compact
_VERSION = {"encoding": "protojson", "ext_authz": "v3"}


def _http(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["attributes"]["request"]["http"]


def _headers(doc: dict[str, Any]) -> dict[str, str]:
    http = _http(doc)
    return {**doc["request"]["headers"], ":authority": http["host"], ":method": http["method"],
            ":path": http["path"], ":scheme": http["scheme"]}


# (where the field is in the input, how to rebuild it from the rest). Order matters: a field is
# rebuilt only from fields that are never dropped or that come before it.
DERIVED: tuple[tuple[tuple[str, ...], Callable[[dict[str, Any]], Any]], ...] = (
    (("parsed_path",), lambda d: d["request"]["path_segments"]),
    (("parsed_query",), lambda d: d["request"]["query"]),
    (("truncated_body",), lambda d: d["payload"]["truncated"]),
    (("version",), lambda d: _VERSION),
    (("attributes", "request", "time"), lambda d: d["request"]["time"]),
    (("attributes", "request", "http", "id"), lambda d: d["request"]["id"]),
    (("attributes", "request", "http", "method"), lambda d: d["request"]["method"]),
    (("attributes", "request", "http", "host"), lambda d: d["request"]["host"]),
    (("attributes", "request", "http", "scheme"), lambda d: d["request"]["scheme"]),
    (("attributes", "request", "http", "protocol"), lambda d: d["request"]["protocol"]),
    (("attributes", "request", "http", "path"), lambda d: d["request"]["path"]),
    (("attributes", "request", "http", "size"), lambda d: str(d["payload"]["bytes"])),
    (("attributes", "request", "http", "headers"), _headers),
    (("attributes", "source", "address"),
     lambda d: {"socketAddress": {"address": d["source"]["address"], "portValue": d["source"]["port"]}}),
)
_NAMES = {"/" + "/".join(path): path for path, _ in DERIVED}


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (True is not 1, key order does not count)."""
    if a != b:
        return False  # unequal in Python is unequal as JSON (NaN aside, which the input cannot hold)
    if type(a) is str or type(b) is str:
        return type(a) is type(b)
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return type(a) is type(b) and orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            b, option=orjson.OPT_SORT_KEYS)
    return type(a) is type(b) and a == b


def _parent(doc: Any, path: tuple[str, ...]) -> dict[str, Any] | None:
    node = doc
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


# DERIVED with each path split into (the path of its parent, its key), for `compact`.
_SPLIT = tuple((path[:-1], path[-1], derive) for path, derive in DERIVED)


def compact(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the input without its derivable copies, the pointers of derivable fields it did not have).

    `doc` is not changed: the dicts on the way to a dropped field are copied. (It runs on every
    check: each parent is looked up and copied once.)
    """
    out = dict(doc)
    owned: dict[tuple[str, ...], dict[str, Any]] = {(): out}  # parent path -> our copy of it
    absent: list[str] = []
    parents: dict[tuple[str, ...], Any] = {}
    for parent_path, key, derive in _SPLIT:
        original = parents.get(parent_path, _UNSEEN)
        if original is _UNSEEN:
            original = parents[parent_path] = _parent(doc, (*parent_path, key))
        if original is None:
            continue  # nowhere to put it back: nothing to do
        try:
            value = derive(doc)
        except (KeyError, TypeError):
            continue  # not derivable here: whatever is there stays
        if key not in original:
            absent.append("/" + "/".join((*parent_path, key)))
        elif _same(original[key], value):
            del _owned(owned, parent_path)[key]
    return out, absent


def _owned(owned: dict[tuple[str, ...], dict[str, Any]], path: tuple[str, ...]) -> dict[str, Any]:
    """Our copy of the object at `path` (copying the ones above it on the way, once each)."""
    node = owned.get(path)
    if node is None:
        above = _owned(owned, path[:-1])
        node = above[path[-1]] = dict(above[path[-1]])
        owned[path] = node
    return node


_UNSEEN = object()


def expand(doc: dict[str, Any], absent: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The full input from a compact one: each derivable field not there (and not in `absent`)
    rebuilt, in order. Returns a new document; `doc` is not changed."""
    skip = {_NAMES[p] for p in absent if p in _NAMES}
    out = dict(doc)
    owned: dict[tuple[str, ...], dict[str, Any]] = {(): out}
    for path, derive in DERIVED:
        if path in skip:
            continue
        parent = _parent(out, path)
        if parent is None or path[-1] in parent:
            continue
        try:
            value = derive(out)
        except (KeyError, TypeError):
            continue
        _owned(owned, path[:-1])[path[-1]] = value
    return out


def record_fields(logged: dict[str, Any] | None) -> dict[str, Any]:
    """The decision record's `input` (compact), `input_form` and, when needed, `input_absent`."""
    if not isinstance(logged, dict):
        return {"input": logged}
    stored, absent = compact(logged)
    fields: dict[str, Any] = {"input": stored, "input_form": FORM}
    if absent:
        fields["input_absent"] = absent
    return fields


def full_input(record: dict[str, Any]) -> Any:
    """A decision record's input as the policy saw it (after masking), whatever form it is logged in."""
    logged = record.get("input")
    if record.get("input_form") != FORM or not isinstance(logged, dict):
        return logged
    absent = record.get("input_absent") or ()
    return expand(logged, absent if isinstance(absent, list) else ())
