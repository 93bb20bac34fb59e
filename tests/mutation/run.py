"""`make mutate`: mutation testing of the modules where a surviving mutant is a security hole.

Python: mutmut over check.py, decision.py, response.py, facts/payload.py, identity/, audit/chain.py
and audit/redaction.py, against the unit tests (TESTS); each mutant runs only the tests that reach
its function. mutmut expects its source in ./src, so the run is staged in build/mutate (a copy of
the tree with service/ as src/). The staging keeps mutmut's state (build/mutate/mutants) between
runs, so a second run tests only the mutants of functions that changed; `--fresh` starts over.

Mutants run from mutmut's fork server, which has collected the tests (imported pytest, the
package and the test modules) once: collecting loads nothing of the embedded engine, whose Go
runtime would not survive the fork; each mutant's tests load it afresh.

A surviving mutant either fails the run or is listed in tests/mutation/python_equivalent.py with
the reason it cannot change what a user sees (the entry names the mutated line, so an entry that
no longer matches its mutant counts as unexplained). A timeout is not a kill: timed-out mutants are
reported and fail the run until they are re-run (`--recheck`) or explained.

Rego: tests/mutation/rego_mutants.py over policies/rego.

The summary (per module: mutants, killed, survived, explained, no tests, timeouts) is printed and
written to build/mutate/summary.txt; docs/testing.md keeps the last one.

    python tests/mutation/run.py [--only MODULE ...] [--recheck] [--fresh] [--tree REF] [--skip-rego]
                                 [--skip-python] [--summary-only] [--max-children N]

MODULE is a path under service/llm_authz (`identity/`, `audit/chain.py`, `check.py`); without
--only, every mutant without a result is run (all of them the first time).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "build" / "mutate"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_equivalent import (EXPLAINED, EXPLAINED_LINES, EXPLAINED_PAIRS, KILLED_BY,  # noqa: E402
                                KILLED_BY_FUNCTION, TIMEOUTS_CHECKED)

MODULES = [
    "src/llm_authz/check.py",
    "src/llm_authz/decision.py",
    "src/llm_authz/response.py",
    "src/llm_authz/facts/payload.py",
    "src/llm_authz/identity/*",
    "src/llm_authz/audit/chain.py",
    "src/llm_authz/audit/redaction.py",
]
# The unit tests that reach the mutated modules (each mutant runs those of them that reach its
# function). Changing this list makes mutmut start over.
TESTS = [f"tests/unit/test_{name}.py" for name in (
    "check_promises", "checker_failures", "check_hardening", "check_properties", "decision", "opa_envoy_result",
    "response", "payload", "payload_fields", "identity_check", "identity_config", "jwt", "jwt_signature_cache",
    "jwks", "mtls_binding", "audit_writer", "audit_verify", "audit_chains", "audit_redaction_export",
    "redaction_copy", "raw_credentials", "input", "routes", "quota", "record_proto", "runtime_reload", "signals",
    "tracing")]
# Everything the tests read besides the package (README examples, deploy/ manifests, ...).
COPIED = ["tests", "policies", "tenants", "proto", "docs", "deploy", "bench", "README.md", "Makefile"]
OUTCOMES = ["killed", "survived", "explained", "no tests", "timeout", "not checked", "other"]


def _sync_tree(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    elif source.exists():
        shutil.copy2(source, target)


# Mutation runs only (written into the staging): a mutant's tests run fastest module first, fastest
# test first (by their time in mutmut's clean run), so a killed mutant stops early. The same tests
# run either way; a module's tests stay together, so module fixtures are set up once.
ORDERING_PLUGIN = '''"""Run each mutant's tests fastest first; see tests/mutation/run.py."""
import functools
import json
import pathlib


@functools.lru_cache(maxsize=1)
def _durations():
    stats = pathlib.Path("mutmut-stats.json")
    return json.loads(stats.read_text())["duration_by_test"] if stats.exists() else {}


def pytest_collection_modifyitems(items):
    durations = _durations()
    by_module = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = [sorted(group, key=lambda item: durations.get(item.nodeid, 0.0)) for group in by_module.values()]
    groups.sort(key=lambda group: sum(durations.get(item.nodeid, 0.0) for item in group))
    items[:] = [item for group in groups for item in group]
'''


def export(ref: str) -> Path:
    """The tree as committed at `ref` (without uncommitted changes), to stage from."""
    tree = REPO / "build" / "mutate-tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def stage(fresh: bool, source: Path = REPO) -> None:
    """A copy of the tree as mutmut wants it (the package under src/, its tests beside it), keeping
    mutmut's results for the functions that did not change unless `fresh`."""
    if fresh and STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True, exist_ok=True)
    # Sources are copied as new: mutmut then mutates every file again and keeps the results of each
    # function whose text did not change (it compares a hash of each function).
    _sync_tree(source / "service", STAGE / "src")
    for path in (STAGE / "src").rglob("*.py"):
        path.touch()
    for name in COPIED:
        _sync_tree(source / name, STAGE / name)
    mutated = STAGE / "mutants"
    if mutated.is_dir():
        # Whatever mutmut copied unmutated (support files, tests) is copied again from the new tree;
        # a mutated module stays only while its results file (.meta) is there to go with it.
        for name in ["tests", *COPIED]:
            if (mutated / name).exists() and name != "src":
                _sync_tree(STAGE / name, mutated / name)
        for path in (mutated / "src").rglob("*"):
            if path.is_file() and path.suffix not in (".meta", ".spans") and not Path(f"{path}.meta").exists():
                path.unlink()
    (STAGE / "conftest.py").write_text(ORDERING_PLUGIN)
    quoted = ", ".join(f'"{m}"' for m in MODULES)
    copied = ", ".join(f'"{name}"' for name in [*COPIED, "conftest.py"] if name != "tests")
    tests = ", ".join(f'"{path}"' for path in TESTS)
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
# A mutant whose tests run past (their time in the clean run + 10 s) x 10 of wall time is stopped
# and reported as a timeout (never as a kill).
timeout_constant = 10.0
timeout_multiplier = 10.0
process_isolation = "forkserver"
# Collecting imports pytest, the package and the test modules once, in the fork server; it loads
# nothing of the embedded engine (whose Go runtime would not survive the fork).
forkserver_warmup = "collect"
on_dependency_change = "ignore"
use_git_change_detection = false
also_copy = [{copied}]
""")


def _mutmut(*args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    mutmut = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, "GOGC": "400"}
    if log is None:
        return subprocess.run([str(mutmut), *args], cwd=STAGE, env=env, capture_output=True, text=True)
    with log.open("ab") as out:
        return subprocess.run([str(mutmut), *args], cwd=STAGE, env=env, stdout=out, stderr=subprocess.STDOUT)


def module_globs(modules: list[str]) -> list[str]:
    """`identity/` → `llm_authz.identity.*`; `audit/chain.py` → `llm_authz.audit.chain.*`."""
    globs = []
    for module in modules:
        dotted = module.strip("/").removesuffix(".py").removesuffix("/*").replace("/", ".")
        globs.append(f"llm_authz.{dotted}.*")
    return globs


def results() -> dict[str, str]:
    """Mutant name → outcome, from `mutmut results --all true`."""
    out = _mutmut("results", "--all", "true").stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            found[name] = status.strip()
    return found


def module_of(name: str) -> str:
    """`llm_authz.audit.chain.x_f__mutmut_3` → `audit/chain.py`."""
    dotted = name.split("__mutmut_")[0].rsplit(".", 1)[0]
    return dotted.removeprefix("llm_authz.").replace(".", "/") + ".py"


def function_of(name: str) -> str:
    """`llm_authz.check.xǁCheckerǁcheck__mutmut_3` → `check.Checker.check`."""
    dotted, _, function = name.split("__mutmut_")[0].rpartition(".")
    function = function.removeprefix("x_").removeprefix("xǁ").replace("ǁ", ".")
    return f"{dotted.removeprefix('llm_authz.')}.{function}"


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    try:
        lines = get_diff_for_mutant(name, path=find_mutant(name).path).splitlines()[2:]
    except Exception as exc:  # a results file being written by a running mutmut, say
        out[name] = ["(no diff: %s)" % exc, ""]
        continue
    out[name] = [" ".join(l[1:].strip() for l in lines if l.startswith(sign)) for sign in "-+"]
print(json.dumps(out))
"""


def mutations_of(names: list[str]) -> dict[str, tuple[str, str]]:
    """Mutant name → its mutated line(s) before and after (stripped), from mutmut's diffs."""
    if not names:
        return {}
    out = subprocess.run([sys.executable, "-c", _DIFFS], cwd=STAGE, input=json.dumps(names), capture_output=True,
                         text=True, check=True).stdout
    return {name: (before, after) for name, (before, after) in json.loads(out).items()}


def explanation(function: str, before: str, after: str) -> str | None:
    """Why a survivor cannot change what a user sees, if python_equivalent.py says."""
    why = EXPLAINED.get((function, before, after))
    if why is None:
        why = next((reason for where, original, mutated, reason in EXPLAINED_LINES
                    if fnmatch.fnmatchcase(function, where) and re.fullmatch(original, before)
                    and re.fullmatch(mutated, after)), None)
    if why is None:
        why = next((reason for where, pair, reason in EXPLAINED_PAIRS
                    if fnmatch.fnmatchcase(function, where) and pair(before, after)), None)
    return why


def killed_outside_selection(name: str, tests: tuple[str, ...]) -> bool:
    """Run `tests` (outside TESTS: integration tests through Envoy, say) against one mutant: the
    mutant is active in the test process and in every process it starts (they inherit
    MUTANT_UNDER_TEST and import the mutated package first). True when they fail against the
    mutant and pass without it."""
    env = {**os.environ, "GOGC": "400", "PYTHONPATH": str(STAGE / "mutants" / "src")}

    def passes(mutant: str) -> bool:
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                             cwd=STAGE / "mutants", env={**env, "MUTANT_UNDER_TEST": mutant},
                             capture_output=True, text=True)
        if run.returncode not in (0, 1):  # not there (a tree staged from before they were written), say
            print(f"{' '.join(tests)} did not run (exit {run.returncode}): {run.stdout[-300:]}", file=sys.stderr)
        return run.returncode == 0

    if QUICK:
        return False
    if tests not in _CLEAN:
        _CLEAN[tests] = passes("")
    return _CLEAN[tests] and not passes(name)


_CLEAN: dict[tuple[str, ...], bool] = {}
QUICK = False  # --quick: leave KILLED_BY tests unrun (their mutants count as unexplained)


def _killers(key: tuple[str, str, str]) -> tuple[str, ...] | None:
    """The tests outside the selection named to kill this mutant (by itself, or by its function)."""
    return KILLED_BY.get(key) or next((tests for where, tests in KILLED_BY_FUNCTION.items()
                                       if fnmatch.fnmatchcase(key[0], where)), None)


def python_summary(outcomes: dict[str, str]) -> tuple[list[str], bool]:
    counts: dict[str, Counter] = {}
    unexplained: list[str] = []
    explained: list[str] = []
    timed_out: list[str] = []
    open_statuses = ("survived", "no tests", "timeout", "segfault", "suspicious")
    diffs = mutations_of([n for n, s in outcomes.items() if s in open_statuses])
    for name, status in sorted(outcomes.items()):
        if status in ("timeout", "segfault", "suspicious"):  # not a kill: killed by a named test, or checked
            key = (function_of(name), *diffs[name])
            killers = _killers(key)
            if killers and killed_outside_selection(name, killers):
                status = "killed"
                counts.setdefault(module_of(name), Counter())["killed outside"] += 1
            else:
                status = "timeout"
                why = TIMEOUTS_CHECKED.get(key)
                timed_out.append(f"{name}: {key[1]}  →  {key[2]}" + (f": checked: {why}" if why else ": NOT CHECKED"))
                if why is not None:
                    counts.setdefault(module_of(name), Counter())["timeout checked"] += 1
        if status in ("survived", "no tests"):
            key = (function_of(name), *diffs[name])
            why = explanation(*key)
            killers = _killers(key)
            if why is None and killers and killed_outside_selection(name, killers):
                status = "killed"
                counts.setdefault(module_of(name), Counter())["killed outside"] += 1
            elif why is not None:
                explained.append(f"{name}: {status}, explained: {why}")
                counts.setdefault(module_of(name), Counter())["explained"] += 1
            else:
                unexplained.append(f"{name}: {status}: {key[1]}  →  {key[2]}")
        counts.setdefault(module_of(name), Counter())[status if status in OUTCOMES else "other"] += 1
    lines = ["Python mutants (mutmut). killed includes those killed by KILLED_BY tests (run here, against",
             "the mutant); explained counts the survived and no-tests mutants EXPLAINED gives a reason for:",
             "  module: mutants, " + ", ".join(OUTCOMES) + ", killed outside the selection"]
    for module, count in sorted(counts.items()):
        total = sum(n for k, n in count.items() if k not in ("explained", "killed outside"))
        lines.append(f"  {module}: {total}, " + ", ".join(f"{count[k]} {k}" for k in OUTCOMES)
                     + f", {count['killed outside']}")
    timeouts = [line for line in timed_out if line.endswith("NOT CHECKED")]
    unchecked = sum(1 for s in outcomes.values() if s == "not checked")
    lines.append(f"  explained survivors: {len(explained)}")
    lines.extend(f"    {line}" for line in explained)
    lines.append(f"  UNEXPLAINED survivors: {len(unexplained)}")
    lines.extend(f"    {line}" for line in unexplained)
    lines.append(f"  timeouts (not kills): {len(timed_out)}, of them not checked: {len(timeouts)}")
    lines.extend(f"    {line}" for line in timed_out)
    if unchecked:
        lines.append(f"  not checked yet: {unchecked}")
    return lines, bool(unexplained or timeouts or unchecked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="modules under service/llm_authz (default: all)")
    parser.add_argument("--recheck", action="store_true",
                        help="run again the unexplained survivors, timeouts and no-test mutants (after adding tests)")
    parser.add_argument("--with-unrun", action="store_true", help="with --recheck: also the mutants not run yet")
    parser.add_argument("--fresh", action="store_true", help="forget mutmut's earlier results")
    parser.add_argument("--tree", metavar="REF", help="mutate the tree as committed at REF (default: the worktree)")
    parser.add_argument("--skip-rego", action="store_true")
    parser.add_argument("--skip-python", action="store_true")
    parser.add_argument("--summary-only", action="store_true", help="summarise the results as they are")
    parser.add_argument("--quick", action="store_true", help="do not run the KILLED_BY tests for the summary")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    global QUICK
    QUICK = args.quick
    lines: list[str] = []
    failed = False
    if not args.skip_python:
        if not args.summary_only:
            stage(args.fresh, export(args.tree) if args.tree else REPO)
            globs = module_globs(args.only)
            known = results()
            # mutmut re-runs every mutant it is given by name, so name only those still to run.
            if args.recheck:  # the survivors nothing explains yet (an explained one needs no new test)
                wanted = [n for n, s in known.items() if s not in ("killed", "caught by type check", "not checked")
                          and (not globs or any(fnmatch.fnmatch(n, g) for g in globs))]
                diffs = mutations_of(wanted)
                wanted = [n for n in wanted if explanation(function_of(n), *diffs[n]) is None]
                if args.with_unrun:
                    wanted += [n for n, s in known.items() if s == "not checked"
                               and (not globs or any(fnmatch.fnmatch(n, g) for g in globs))]
            elif globs and known:
                # A module none of whose mutants ran yet is named by its glob (mutmut then also runs the
                # mutants it makes of a changed file); otherwise by the names still to run.
                wanted = []
                for glob in globs:
                    mine = {n: s for n, s in known.items() if fnmatch.fnmatch(n, glob)}
                    fresh = all(s == "not checked" for s in mine.values())
                    wanted += [glob] if fresh else [n for n, s in mine.items() if s == "not checked"]
            else:
                wanted = globs  # the first run: nothing is known yet
            # mutmut makes the mutants of a new or changed function anew (their results gone) only when it
            # runs, so it always runs: given no names, it runs every mutant without a result, those included.
            _mutmut("run", "--max-children", str(args.max_children), *wanted, log=STAGE / "mutmut-run.log")
            if wanted:  # it ran only these: run the ones it made anew too, or they would stay unchecked
                reset = [n for n, s in results().items() if s == "not checked" and known.get(n) != s
                         and (not globs or any(fnmatch.fnmatch(n, g) for g in globs))]
                if reset:
                    _mutmut("run", "--max-children", str(args.max_children), *reset, log=STAGE / "mutmut-run.log")
        python_lines, python_failed = python_summary(results())
        lines.extend(python_lines)
        failed |= python_failed
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
