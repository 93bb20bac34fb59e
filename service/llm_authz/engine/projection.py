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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# A projection spec: None means "the whole value"; a dict maps a key to the spec under it.
Spec = dict[str, "Spec | None"] | None

_PARSE_QUERY = 'parsed := rego.parse_module("policy.rego", input.source)'


def _is_input_var(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "var" and node.get("value") == "input"


class _Collector:
    def __init__(self) -> None:
        self.paths: list[tuple[str, ...]] = []
        self.whole = False

    def visit(self, node: Any) -> None:
        stack = [node]
        while stack and not self.whole:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                value = item.get("value")
                if item.get("type") == "ref" and isinstance(value, list) and value and _is_input_var(value[0]):
                    prefix: list[str] = []
                    for term in value[1:]:
                        if isinstance(term, dict) and term.get("type") == "string" and isinstance(term.get("value"), str):
                            prefix.append(term["value"])
                        else:
                            break
                    if not prefix:
                        self.whole = True
                        return
                    self.paths.append(tuple(prefix))
                    stack.extend(value[1:])  # dynamic steps may hold refs of their own
                elif _is_input_var(item):
                    self.whole = True  # input as a value of its own: everything is visible
                    return
                else:
                    stack.extend(item.values())


def spec_from_paths(paths: Iterable[tuple[str, ...]]) -> Spec:
    """The projection that keeps each path (and everything under it)."""
    root: dict[str, Any] = {}
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
    return spec_from_paths(collector.paths)


def project(doc: Any, spec: Spec) -> Any:
    """The part of `doc` that `spec` keeps. Values are shared with `doc`, not copied."""
    if spec is None or not isinstance(doc, dict):
        return doc
    out = {}
    for key, sub in spec.items():
        if key in doc:
            value = doc[key]
            out[key] = value if sub is None or not isinstance(value, dict) else project(value, sub)
    return out


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

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, sub in sorted(node.items()):
            path = f"{prefix}{key}"
            if sub is None:
                out.append(path)
            else:
                walk(sub, path + ".")

    walk(spec, "")
    return out
