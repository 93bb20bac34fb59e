"""What replay cannot reproduce: builtins whose answer depends on when or where they run, and
input the audit log masked but the policy reads."""

from __future__ import annotations

import re
from collections.abc import Mapping

from llm_authz.engine.projection import Spec

# Builtins whose value is not a function of input and data.
NON_DETERMINISTIC = ("time.now_ns", "http.send", "rand.intn", "uuid.rfc4122", "uuid.parse", "net.lookup_ip_addr",
                     "opa.runtime", "crypto.x509.parse_and_verify_certificates")
_BUILTIN = re.compile(r"\b(" + "|".join(re.escape(b) for b in NON_DETERMINISTIC) + r")\s*\(")


def non_deterministic_builtins(modules: Mapping[str, str]) -> list[str]:
    """The non-deterministic builtins a revision's modules call, sorted."""
    found: set[str] = set()
    for source in modules.values():
        found.update(_BUILTIN.findall(_strip_comments(source)))
    return sorted(found)


def reads_masked_input(projection: Spec, masked: list[str]) -> list[str]:
    """The masked JSON pointers the policy can read, by the engine's input projection
    (the paths its modules reference; None means the whole input)."""
    return [pointer for pointer in masked if _readable(projection, pointer)]


def _readable(spec: Spec, pointer: str) -> bool:
    node = spec
    for part in pointer.lstrip("/").split("/"):
        if node is None:
            return True  # the whole subtree is visible
        key = part.replace("~1", "/").replace("~0", "~")
        if key not in node:
            return False
        node = node[key]
    return True  # the masked value itself, or something under it, is read


def _strip_comments(source: str) -> str:
    return "\n".join(line.split("#", 1)[0] if '"' not in line else line for line in source.splitlines())
