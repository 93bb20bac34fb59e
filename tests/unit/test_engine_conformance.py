"""The embedded engine, as the check path calls it (input projection, orjson fast call), gives
OPA v1.20.2's answer on every conformance case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_authz.engine.base import UNDEFINED
from llm_authz.engine.embedded import EmbeddedEngine
from llm_authz.errors import PolicyError

REPO = Path(__file__).resolve().parents[2]
CASES_FILE = next((p for p in (REPO.parent / "shared" / "conformance" / "rego_cases.json",
                               REPO / "tests" / "data" / "rego_cases.json") if p.exists()), None)


def _cases() -> list[dict[str, Any]]:
    return json.loads(CASES_FILE.read_text())["cases"] if CASES_FILE else []


CASES = _cases()


def _outcome(modules: dict[str, str], data: Any, query: str, input_doc: Any, **kw: Any) -> dict[str, Any]:
    engine = EmbeddedEngine(modules, data, **kw)
    try:
        value = engine.evaluate(query, input_doc)
    except PolicyError as exc:
        return {"error": str(exc)}
    finally:
        engine.close()
    return {"undefined": True} if value is UNDEFINED else {"result": value}


@pytest.mark.skipif(not CASES, reason=f"no conformance cases at {CASES_FILE}")
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_conformance_case(case: dict[str, Any]) -> None:
    got = _outcome(case["modules"], case["data"], case["query"], case.get("input"))
    expected = case["expected"]
    if "error" in expected:
        assert "error" in got, got
    else:
        assert got == expected
        # and exactly what the whole input with the bindings' own path gives
        assert got == _outcome(case["modules"], case["data"], case["query"], case.get("input"), project_input=False)
