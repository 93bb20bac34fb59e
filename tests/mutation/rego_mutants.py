"""Mutation pass over the Rego policies: every mutant must make `llm-authz policy test` fail.

Operators, applied one at a time to each policy module (not to *_test.rego):
- flip each comparison (`>` ↔ `>=`, `<` ↔ `<=`, `==` ↔ `!=`);
- flip each negation (drop a `not`);
- drop each condition of the `allow` rule.

A mutant that still passes every Rego test survives. Survivors that cannot change a decision
(equivalent mutants) are listed in EXPLAINED with the reason; any other survivor fails the run.

    python tests/mutation/rego_mutants.py [POLICY_DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from llm_authz.errors import PolicyError
from llm_authz.policy import read_data, read_modules
from llm_authz.regotest import run_tests

REPO = Path(__file__).resolve().parents[2]

# (module, the mutated line's text after mutation, stripped) → why the mutant cannot change a decision.
EXPLAINED: dict[tuple[str, str, str], str] = {
    ("llm/authz.rego", "drop", "t"):
        "`t := data.tenants[...]` on the line before already fails when the tenant is undefined; a tenant "
        "document is an object, never false, so the bare `t` adds nothing.",
    ("llm/authz.rego", "drop", "g"):
        "`g := t.models[...]` on the line before already fails when the grant is undefined; a grant is an "
        "object, never false, so the bare `g` adds nothing.",
    ("llm/authz.rego", "drop", "input.identity.authenticated"):
        "`source_allowed`, later in the same rule, reads `tenant`, which is defined only for an "
        "authenticated identity: an unauthenticated caller fails there.",
    ("llm/authz.rego", "flip", "signal_settings.travel_minutes >= 0"):
        "with travel_minutes 0 the next condition needs seconds_ago < 0, which the service never "
        "produces: the window is off either way.",
    ("llm/authz.rego", "drop", "is_string(input.model.operation)"):
        "the next conditions need the operation in the grant's `operations`, which tenant validation fills "
        "only with operation names (strings): a null operation is never found there.",
}

_COMPARISONS = [(" >= ", " > "), (" <= ", " < "), (" > ", " >= "), (" < ", " <= "), (" == ", " != "),
                (" != ", " == ")]


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int  # 1-based
    operator: str  # flip | negation | drop
    original: str
    mutated: str | None  # None: the line is removed

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.module, self.operator, self.original.strip() if self.operator == "drop" else
                (self.mutated or "").strip())

    def describe(self) -> str:
        after = "(removed)" if self.mutated is None else self.mutated.strip()
        return f"{self.module}:{self.line} [{self.operator}] {self.original.strip()}  →  {after}"


def _code(line: str) -> str:
    return line.split("#", 1)[0]


def mutants_of(module: str, source: str) -> list[Mutant]:
    found: list[Mutant] = []
    lines = source.splitlines()
    in_allow = False
    for index, line in enumerate(lines):
        code = _code(line)
        stripped = code.strip()
        if re.match(r"^allow\s+if\s*\{", code):
            in_allow = True
            continue
        if in_allow and stripped == "}":
            in_allow = False
            continue
        if not stripped or stripped.startswith(("package", "import")):
            continue
        seen: set[str] = set()
        for before, after in _COMPARISONS:
            position = code.find(before)
            while position >= 0:
                mutated = line[:position] + after + line[position + len(before):]
                # " > " also matches inside " >= " at another offset only if spaced; skip repeats.
                if mutated not in seen and mutated != line:
                    seen.add(mutated)
                    found.append(Mutant(module, index + 1, "flip", line, mutated))
                position = code.find(before, position + 1)
        negated = re.match(r"^(\s*)not\s+(.*)$", line)
        if negated:
            found.append(Mutant(module, index + 1, "negation", line, negated.group(1) + negated.group(2)))
        elif re.search(r"\bnot\s+", code) and re.search(r"\bif\s+not\s+", code):
            found.append(Mutant(module, index + 1, "negation", line, re.sub(r"\bif\s+not\s+", "if ", line, 1)))
        if in_allow:
            found.append(Mutant(module, index + 1, "drop", line, None))
    return found


def apply(source: str, mutant: Mutant) -> str:
    lines = source.splitlines()
    if mutant.mutated is None:
        del lines[mutant.line - 1]
    else:
        lines[mutant.line - 1] = mutant.mutated
    return "\n".join(lines) + "\n"


def outcome(modules: dict[str, str], data: object) -> str:
    """killed (a test fails or the module no longer compiles) or survived."""
    try:
        results = run_tests(modules, data)
    except PolicyError:
        return "killed"
    return "killed" if any(r.outcome != "pass" for r in results) else "survived"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policies", nargs="?", type=Path, default=REPO / "policies" / "rego")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    modules = read_modules(args.policies, include_tests=True)
    data = read_data(args.policies)
    if outcome(modules, data) != "survived":
        print("the policy tests fail before any mutation: fix them first", file=sys.stderr)
        return 2
    results = []
    for name, source in sorted(modules.items()):
        if name.endswith("_test.rego"):
            continue
        for mutant in mutants_of(name, source):
            verdict = outcome({**modules, name: apply(source, mutant)}, data)
            why = EXPLAINED.get(mutant.key) if verdict == "survived" else None
            results.append({"mutant": mutant.describe(), "outcome": verdict, "explained": why})
    killed = sum(r["outcome"] == "killed" for r in results)
    explained = [r for r in results if r["outcome"] == "survived" and r["explained"]]
    unexplained = [r for r in results if r["outcome"] == "survived" and not r["explained"]]
    print(f"Rego mutants: {len(results)}, killed {killed}, survived {len(explained) + len(unexplained)} "
          f"({len(explained)} explained, {len(unexplained)} unexplained)")
    for r in explained:
        print(f"  explained survivor: {r['mutant']}\n      {r['explained']}")
    for r in unexplained:
        print(f"  SURVIVED: {r['mutant']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
