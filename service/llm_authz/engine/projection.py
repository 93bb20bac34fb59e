"""Send the engine only the parts of the input document the policies can read.

OPA's cost per evaluation grows with the size of the input it is handed (every value is
converted), and the OPA input document carries much that a given policy never reads (the
OPA-Envoy `attributes`, headers twice, the parsed body...). The modules are parsed once, by
OPA's own parser (`rego.parse_module`), and every reference to `input` is collected:
`input.identity.tenant` means the policy can see `identity.tenant` and everything under it,
and nothing else through that reference. The union of those paths is the projection.

It is conservative: `input` used as a whole (`input[x]`, `walk(input, ...)`, `f(input)`,
`with input as ...`, `x := input`) or a module that does not parse makes the projection the
whole document. A dynamic step (`input.payload[k]`) keeps the whole subtree before it. The
audit log still records the full (redacted) input, so replay against any other policy sees
everything.

Members of a collection are projected too, in the one shape where that is plainly safe:
`some b in input.quota.buckets` (or `some i, b in ...`) where `b` is bound there and nowhere
else, and every other use of the name `b`, in any rule of any module, is a static reference
into it (`b.available`). Each member is then cut to those keys. A second binding, any other use
(`f(b)`, `b == c`, `b[k]`, `x := b`, a membership test `b in ...`) keeps the members whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# A projection spec: None means "the whole value"; a dict maps a key to the spec under it, and
# EACH to the spec of every member of the collection found there.
Spec = dict[Any, "Spec | None"] | None

_PARSE_QUERY = 'parsed := rego.parse_module("policy.rego", input.source)'


class _Each:
    """The key of a spec that applies to every member of a collection (never a JSON key)."""

    def __repr__(self) -> str:
        return "[*]"


EACH: Any = _Each()
_MEMBER_CALLS = {"member_2": 1, "member_3": 2}  # internal.member_N: where the member var sits


def _is_input_var(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "var" and node.get("value") == "input"


def _static_steps(terms: list[Any]) -> list[str]:
    """The leading string steps of a reference's terms."""
    steps: list[str] = []
    for term in terms:
        if isinstance(term, dict) and term.get("type") == "string" and isinstance(term.get("value"), str):
            steps.append(term["value"])
        else:
            break
    return steps


def _member_binding(item: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """(var, input path) for `some var in input.<static path>` (OPA's internal.member_2/3 call)."""
    value = item.get("value")
    if item.get("type") != "call" or not isinstance(value, list) or not value:
        return None
    op = value[0]
    if not (isinstance(op, dict) and op.get("type") == "ref" and isinstance(op.get("value"), list)):
        return None
    name = op["value"]
    if (len(name) != 2 or name[0] != {"type": "var", "value": "internal"} or not isinstance(name[1], dict)
            or name[1].get("value") not in _MEMBER_CALLS):
        return None
    slot = _MEMBER_CALLS[name[1]["value"]]
    if len(value) != slot + 2:
        return None
    member, collection = value[slot], value[-1]
    if not (isinstance(member, dict) and member.get("type") == "var" and isinstance(member.get("value"), str)):
        return None
    if not (isinstance(collection, dict) and collection.get("type") == "ref"
            and isinstance(collection.get("value"), list) and collection["value"]
            and _is_input_var(collection["value"][0])):
        return None
    steps = _static_steps(collection["value"][1:])
    if not steps or len(steps) != len(collection["value"]) - 1:
        return None
    return member["value"], tuple(steps)


class _Collector:
    def __init__(self) -> None:
        self.paths: list[tuple[Any, ...]] = []
        self.whole = False
        self.members: dict[str, list[tuple[str, ...]]] = {}  # var -> input paths it ranges over
        self.uses: dict[str, list[tuple[str, ...] | None]] = {}  # var -> static steps after it (None: other use)

    def visit(self, node: Any) -> None:
        stack = [node]
        while stack and not self.whole:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                value = item.get("value")
                kind = item.get("type")
                binding = _member_binding(item)
                if binding is not None:
                    var, path = binding
                    self.members.setdefault(var, []).append(path)
                    slot = _MEMBER_CALLS[value[0]["value"][1]["value"]]
                    stack.extend(value[1:slot])  # the key var of member_3; the member var and path are taken
                elif kind == "ref" and isinstance(value, list) and value and _is_input_var(value[0]):
                    prefix = _static_steps(value[1:])
                    if not prefix:
                        self.whole = True
                        return
                    self.paths.append(tuple(prefix))
                    stack.extend(value[1:])  # dynamic steps may hold refs of their own
                elif _is_input_var(item):
                    self.whole = True  # input as a value of its own: everything is visible
                    return
                elif kind == "ref" and isinstance(value, list) and value and isinstance(value[0], dict) \
                        and value[0].get("type") == "var" and isinstance(value[0].get("value"), str):
                    steps = _static_steps(value[1:])
                    self.uses.setdefault(value[0]["value"], []).append(tuple(steps) if steps else None)
                    stack.extend(value[1:])
                elif kind == "var" and isinstance(value, str):
                    self.uses.setdefault(value, []).append(None)
                else:
                    stack.extend(item.values())

    def all_paths(self) -> list[tuple[Any, ...]]:
        """The collected paths, with members cut where each member var is bound once and only read statically."""
        out = list(self.paths)
        for var, bound in self.members.items():
            uses = self.uses.get(var, [])
            if len(bound) == 1 and uses and all(u is not None for u in uses):
                out.extend((*bound[0], EACH, *u) for u in uses if u is not None)
            else:
                out.extend(bound)
        return out


def spec_from_paths(paths: Iterable[tuple[Any, ...]]) -> Spec:
    """The projection that keeps each path (and everything under it)."""
    root: dict[Any, Any] = {}
    for path in sorted(set(paths), key=len):  # shorter first: a whole subtree absorbs deeper paths
        node = root
        for i, key in enumerate(path):
            last = i == len(path) - 1
            if key in node and node[key] is None:
                break  # already whole
            if last:
                node[key] = None
            else:
                node = node.setdefault(key, {})
    return root


def spec_from_asts(asts: Iterable[Any]) -> Spec:
    """The projection for parsed modules (OPA's JSON AST), or None when input is read whole."""
    collector = _Collector()
    for ast in asts:
        collector.visit(ast)
        if collector.whole:
            return None
    return spec_from_paths(collector.all_paths())


def project(doc: Any, spec: Spec) -> Any:
    """The part of `doc` that `spec` keeps. Values are shared with `doc`, not copied."""
    if spec is None:
        return doc
    if EACH in spec:
        return _project_members(doc, spec)
    if not isinstance(doc, dict):
        return doc
    out = {}
    for key, sub in spec.items():
        if key in doc:
            value = doc[key]
            out[key] = value if sub is None or not isinstance(value, dict | list) else project(value, sub)
    return out


def _project_members(doc: Any, spec: dict[Any, Any]) -> Any:
    """Every member cut to spec[EACH]; a member also read by its own key stays whole."""
    each = spec[EACH]
    if isinstance(doc, list):
        return [project(member, each) for member in doc]
    if isinstance(doc, dict):
        return {key: (member if key in spec else project(member, each)) for key, member in doc.items()}
    return doc


def analyse(modules: Mapping[str, str], parse: Any) -> Spec:
    """The projection for these modules. `parse(source)` returns a module's JSON AST or raises.

    Any failure to parse means "send the whole document": the projection must never hide a
    value a policy can read.
    """
    asts = []
    for source in modules.values():
        try:
            asts.append(parse(source))
        except Exception:
            return None
    return spec_from_asts(asts)


def describe(spec: Spec) -> list[str]:
    """The kept paths, for logs and tests: ['identity.tenant', 'model', ...] or ['(whole input)']."""
    if spec is None:
        return ["(whole input)"]
    out: list[str] = []

    def walk(node: dict[Any, Any], prefix: str) -> None:
        for key, sub in sorted(node.items(), key=lambda item: str(item[0])):
            path = f"{prefix[:-1]}[*]" if key is EACH else f"{prefix}{key}"
            if sub is None:
                out.append(path)
            else:
                walk(sub, path + ".")

    walk(spec, "")
    return out
