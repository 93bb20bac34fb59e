"""OPA conformance: every case in shared/conformance/rego_cases.json, through `llm-authz policy eval`.

The expected outcomes were computed by OPA v1.20.2 with strict builtin errors; the engine must
give exactly the same result, the same undefined, and an error (exit 2) where OPA errs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES_FILE = next((p for p in (REPO.parent / "shared" / "conformance" / "rego_cases.json",
                               REPO / "tests" / "data" / "rego_cases.json") if p.exists()), None)
CASES = json.loads(CASES_FILE.read_text())["cases"] if CASES_FILE else []


def run_case(case: dict, root: Path) -> tuple[int, str, str]:
    work = root / case["name"]
    (work / "policy").mkdir(parents=True)
    for name, source in case["modules"].items():
        (work / "policy" / name).write_text(source)
    (work / "policy" / "data.json").write_text(json.dumps(case["data"]))
    (work / "input.json").write_text(json.dumps(case["input"]))
    proc = subprocess.run(
        [sys.executable, "-m", "llm_authz", "policy", "eval", "-d", str(work / "policy"),
         "-i", str(work / "input.json"), case["query"]],
        capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run_case(c, root), CASES))
    return dict(zip((c["name"] for c in CASES), results))


def test_the_cases_are_there():
    assert len(CASES) >= 83, f"conformance cases not found (looked for {CASES_FILE})"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case, outcomes):
    code, out, err = outcomes[case["name"]]
    expected = case["expected"]
    if "error" in expected:
        assert code == 2, f"expected an evaluation error, got exit {code}: {out}"
        assert err.strip(), "an error must be explained on stderr"
    else:
        assert code == 0, err
        assert json.loads(out) == expected
