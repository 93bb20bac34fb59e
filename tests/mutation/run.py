"""`make mutate`: mutation testing of the modules where a surviving mutant is a security hole.

Python: mutmut over check.py, decision.py, response.py, facts/payload.py, identity/, audit/chain.py
and audit/redaction.py, against their unit tests (TESTS). mutmut expects its source in ./src, so the run is
staged in build/mutate (a copy of the tree with service/ as src/); the Go runtime of the embedded
engine does not survive a fork, so mutants run from a fork server that has imported nothing of it.

Rego: tests/mutation/rego_mutants.py over policies/rego.

The summary (killed / survived / explained per module) is printed and written to
build/mutate/summary.txt; docs/testing.md keeps the last one with every survivor explained.

    python tests/mutation/run.py [--only GLOB ...] [--skip-rego] [--max-children N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "build" / "mutate"
MODULES = [
    "src/llm_authz/check.py",
    "src/llm_authz/decision.py",
    "src/llm_authz/response.py",
    "src/llm_authz/facts/payload.py",
    "src/llm_authz/identity/*",
    "src/llm_authz/audit/chain.py",
    "src/llm_authz/audit/redaction.py",
]
# The unit tests of the mutated modules: each mutant runs those of them that reach its function.
TESTS = [f"tests/unit/test_{name}.py" for name in (
    "check_promises", "checker_failures", "check_hardening", "decision", "opa_envoy_result", "response",
    "payload", "payload_fields", "identity_check", "identity_config", "jwt", "jwt_signature_cache", "jwks",
    "mtls_binding", "audit_writer", "audit_verify", "audit_chains", "audit_redaction_export",
    "redaction_copy", "raw_credentials", "input", "routes", "quota")]
# Everything the tests read besides the package (README examples, deploy/ manifests, ...).
COPIED = ["tests", "policies", "tenants", "proto", "docs", "deploy", "bench", "README.md", "Makefile"]


def stage(only: list[str]) -> None:
    """A copy of the tree as mutmut wants it: the package under src/, its tests beside it."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    shutil.copytree(REPO / "service", STAGE / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in COPIED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, STAGE / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, STAGE / name)
    quoted = ", ".join(f'"{m}"' for m in only)
    copied = ", ".join(f'"{name}"' for name in COPIED if name != "tests")
    tests = ", ".join(f'"{path}"' for path in TESTS if (REPO / path).exists())
    (STAGE / "pyproject.toml").write_text(f"""\
[tool.pytest.ini_options]
testpaths = ["tests"]
timeout = 300
markers = ["integration: starts real processes", "safety: holds a safety promise"]

[tool.mutmut]
source_paths = ["src/llm_authz"]
only_mutate = [{quoted}]
pytest_add_cli_args_test_selection = [{tests}]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]
# Each mutant imports the package and the engine afresh (no fork after Go starts): allow for it.
timeout_constant = 60.0
process_isolation = "forkserver"
forkserver_warmup = "none"
also_copy = [{copied}]
""")


def run_mutmut(max_children: int) -> int:
    mutmut = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, "GOGC": "400"}
    with (STAGE / "mutmut-run.log").open("wb") as out:
        return subprocess.run([str(mutmut), "run", "--max-children", str(max_children)], cwd=STAGE, env=env,
                              stdout=out, stderr=subprocess.STDOUT).returncode


def python_results() -> dict[str, Counter]:
    """Outcome counts per module from `mutmut results --all true`."""
    mutmut = Path(sys.executable).parent / "mutmut"
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=STAGE, capture_output=True, text=True).stdout
    counts: dict[str, Counter] = {}
    for line in out.splitlines():
        match = re.match(r"\s*([\w.]+?)\.x[_ǁ]\S*__mutmut_\d+:\s*(\w[\w ]*)$", line)
        if match:
            module = match.group(1).removeprefix("src.")
            counts.setdefault(module, Counter())[match.group(2).strip()] += 1
    return counts


def survivors() -> list[str]:
    mutmut = Path(sys.executable).parent / "mutmut"
    out = subprocess.run([str(mutmut), "results"], cwd=STAGE, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip().endswith(": survived")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="module globs under src/ (default: the listed modules)")
    parser.add_argument("--skip-rego", action="store_true")
    parser.add_argument("--skip-python", action="store_true")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    lines: list[str] = []
    failed = False
    if not args.skip_python:
        stage(args.only or MODULES)
        run_mutmut(args.max_children)
        counts = python_results()
        lines.append("Python mutants (mutmut, unit tests):")
        for module, count in sorted(counts.items()):
            lines.append(f"  {module}: " + ", ".join(f"{n} {k}" for k, n in sorted(count.items())))
        left = survivors()
        lines.append(f"  survivors: {len(left)}")
        lines.extend(f"    {s}" for s in left)
    if not args.skip_rego:
        rego = subprocess.run([sys.executable, str(REPO / "tests" / "mutation" / "rego_mutants.py")],
                              capture_output=True, text=True)
        lines.append(rego.stdout.rstrip())
        failed |= rego.returncode != 0
    summary = "\n".join(lines)
    print(summary)
    STAGE.mkdir(parents=True, exist_ok=True)
    (STAGE / "summary.txt").write_text(summary + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
