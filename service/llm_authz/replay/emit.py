"""`--emit-tests`: flipped or mismatched records as Rego tests, so a reviewed report becomes a regression test."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import orjson

PACKAGE = "replay.regressions"


def _rego_value(value: Any) -> str:
    return orjson.dumps(value).decode()  # JSON is valid Rego


def _assertions(expected: Any) -> list[str] | None:
    if isinstance(expected, bool):
        return [f"d == {str(expected).lower()}"]
    if isinstance(expected, dict) and isinstance(expected.get("allow"), bool):
        lines = [f"d.allow == {str(expected['allow']).lower()}"]
        if "status" in expected:
            lines.append(f"d.status == {_rego_value(expected['status'])}")
        if "reasons" in expected:
            lines.append(f"d.reasons == {_rego_value(expected['reasons'])}")
        return lines
    if isinstance(expected, dict) and isinstance(expected.get("allowed"), bool):
        lines = [f"d.allowed == {str(expected['allowed']).lower()}"]
        if "http_status" in expected:
            lines.append(f"d.http_status == {_rego_value(expected['http_status'])}")
        return lines
    return None  # an error or an undefined decision: not expressible as a test rule


def write_tests(directory: Path, cases: list[dict[str, Any]]) -> int:
    """Write one Rego test module; returns the number of tests written."""
    directory.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, str] = {}
    body: list[str] = []
    written = 0
    for case in cases:
        checks = _assertions(case["expected"])
        if checks is None:
            continue
        tenants = _rego_value(case["tenants"])
        name = "tenants_" + hashlib.sha256(tenants.encode()).hexdigest()[:12]
        datasets.setdefault(name, tenants)
        test = "test_" + re.sub(r"[^A-Za-z0-9_]", "_", case["decision_id"])
        entrypoint = case["entrypoint"]
        body.append(f"# seq {case['seq']}, tenant {case['tenant']}, model {case['model']}\n"
                    f"{test} if {{\n\td := {entrypoint} with input as {_rego_value(case['input'])} with data.tenants as {name}\n"
                    + "".join(f"\t{c}\n" for c in checks) + "}\n")
        written += 1
    header = [f"# Regression tests written by `llm-authz replay --emit-tests`: the expected decisions of",
              "# reviewed records. Run with: llm-authz policy test <policies> <this directory>",
              f"package {PACKAGE}", "", "import rego.v1", ""]
    header += [f"{name} := {value}\n" for name, value in datasets.items()]
    (directory / "replay_regressions_test.rego").write_text("\n".join(header) + "\n" + "\n".join(body))
    return written
