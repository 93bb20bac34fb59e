"""`llm-authz policy test`: run the Rego `test_` rules, as `opa test` does."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from llm_authz.engine.base import UNDEFINED
from llm_authz.engine.embedded import EmbeddedEngine
from llm_authz.errors import PolicyError

_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)


@dataclass
class TestResult:
    name: str
    outcome: str  # pass | fail | error
    duration_us: int
    message: str = ""


def discover(modules: dict[str, str]) -> list[str]:
    """Every test rule as a query (`data.pkg.test_name`), once each, in file order."""
    queries: list[str] = []
    for source in modules.values():
        package = _PACKAGE.search(source)
        if not package:
            continue
        for rule in _TEST_RULE.findall(source):
            query = f"data.{package.group(1)}.{rule}"
            if query not in queries:
                queries.append(query)
    return queries


def run_tests(modules: dict[str, str], data: Any, pattern: str | None = None) -> list[TestResult]:
    engine = EmbeddedEngine(modules, data)
    try:
        selected = [q for q in discover(modules) if pattern is None or re.search(pattern, q)]
        results = []
        for query in selected:
            started = time.perf_counter()
            try:
                value = engine.evaluate(query, None)
                outcome = "pass" if value is True else "fail"
                message = "" if value is True else ("undefined" if value is UNDEFINED else f"value {value!r}")
            except PolicyError as exc:
                outcome, message = "error", str(exc)
            results.append(TestResult(query, outcome, int((time.perf_counter() - started) * 1e6), message))
        return results
    finally:
        engine.close()
