"""What replay cannot reproduce: builtins whose answer depends on when or where they run, and
input the audit log masked but the policy reads."""

from __future__ import annotations

import re
from collections.abc import Mapping

# Builtins whose value is not a function of input and data.
NON_DETERMINISTIC = ("time.now_ns", "http.send", "rand.intn", "uuid.rfc4122", "uuid.parse", "net.lookup_ip_addr",
                     "opa.runtime", "crypto.x509.parse_and_verify_certificates")
_BUILTIN = re.compile(r"\b(" + "|".join(re.escape(b) for b in NON_DETERMINISTIC) + r")\s*\(")
_INPUT_KEY = re.compile(r"\binput\.([A-Za-z_][A-Za-z0-9_]*)")
_INPUT_WHOLE = re.compile(r"\binput\s*(?:\[|\)|,|\}|$)|with\s+input\s+as|\binput\s*==|==\s*input\b", re.MULTILINE)


def non_deterministic_builtins(modules: Mapping[str, str]) -> list[str]:
    """The non-deterministic builtins a revision's modules call, sorted."""
    found: set[str] = set()
    for source in modules.values():
        found.update(_BUILTIN.findall(_strip_comments(source)))
    return sorted(found)


def reads_masked_input(modules: Mapping[str, str], masked: list[str]) -> list[str]:
    """The masked JSON pointers whose top-level input key the policy may read (conservatively)."""
    if not masked:
        return []
    text = "\n".join(_strip_comments(s) for s in modules.values())
    if _INPUT_WHOLE.search(text):
        return list(masked)
    keys = set(_INPUT_KEY.findall(text))
    return [p for p in masked if p.lstrip("/").split("/", 1)[0] in keys]


def _strip_comments(source: str) -> str:
    return "\n".join(line.split("#", 1)[0] if '"' not in line else line for line in source.splitlines())
