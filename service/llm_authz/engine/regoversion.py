"""Rego v0 modules: recognised and refused with a message that says why and what to do.

The embedded engine is OPA v1 (opa-golib-python-bindings), which parses Rego v1 only: the
bindings expose no rego-version or v0-compatibility option (OPA's `--v0-compatible` exists only
in the `opa` binary and server), so a v0 module cannot be loaded as it is. OPA's own parse and
compile errors for v0 syntax are precise but do not say "v0"; this names it.
"""

from __future__ import annotations

import re

from llm_authz.errors import PolicyLoadError

# What OPA v1 reports for syntax and builtins that only Rego v0 has.
_V0_SIGNS = re.compile(
    r"`if` keyword is required before rule body"
    r"|`contains` keyword is required for partial set rules"
    r"|deprecated built-in function calls in expression"
)


class RegoV0Error(PolicyLoadError):
    """A module is written in Rego v0, which the embedded engine cannot be told to accept."""


def v0_error(message: str) -> RegoV0Error | None:
    """A RegoV0Error explaining OPA's message, when the message shows v0 syntax; else None."""
    if not _V0_SIGNS.search(message):
        return None
    return RegoV0Error(
        "this looks like a Rego v0 module (OPA before 1.0). The embedded engine is OPA v1 and accepts "
        "Rego v1 only; it has no v0-compatibility switch. Upgrade the module with `opa fmt --write --v0-v1` "
        "(or by hand: `if` before every rule body, `contains` for partial sets, `import rego.v1`), "
        f"or use --engine opa with an OPA server started with --v0-compatible. OPA said: {message}"
    )
