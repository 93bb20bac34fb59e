"""What an operator reads: JSON log lines, metric series that exist from start, the alert rules
(promtool) and the Grafana dashboard, all checked against a running service behind Envoy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from llm_authz.audit import reader
from tests.conftest import ACME_KEY, REPO, Stack, start_stack

pytestmark = pytest.mark.integration

RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "llm-authz.json"
METRIC_NAME = re.compile(r"\bllm_authz_[a-z0-9_]+")
TRACE = "0af7651916cd43dd8448eb211c80319c"
# Series that describe a feature this stack does not use (it serves no --bundle): they exist from
# start when the feature is on.
ONLY_WHEN_ON = {"llm_authz_bundle_revision_info", "llm_authz_bundle_last_activation_timestamp_seconds"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """A stack, and its /metrics as read before any request."""
    stack, stop_all = start_stack(tmp_path_factory.mktemp("operations"))
    yield stack, exposition(stack)
    stop_all()


def exposition(stack: Stack) -> str:
    return httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text


def sample_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def exported(name: str, names: set[str]) -> bool:
    """A sample of this name, or of the histogram or counter family it names."""
    return any(f"{name}{suffix}" in names for suffix in ("", "_bucket", "_total"))


def value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def promtool() -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed (Debian package prometheus; make install installs it)"
    return binary


def dashboard_queries() -> list[str]:
    exprs = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return exprs


def documented_metrics() -> set[str]:
    text = (REPO / "README.md").read_text() + "".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    return set(METRIC_NAME.findall(text))


def test_every_documented_series_exists_before_the_first_check(fresh: tuple[Stack, str]) -> None:
    _, before = fresh
    names = sample_names(before)
    for name in sorted(documented_metrics() - ONLY_WHEN_ON | set(METRIC_NAME.findall(RULES.read_text()))):
        assert exported(name, names), name
    for series in ['llm_authz_audit_errors_total{kind="write"}', 'llm_authz_policy_reloads_total{outcome="error"}',
                   'llm_authz_checks_total{result="deny",status="500",tenant="none"}',
                   'llm_authz_denials_total{reason="policy_error",tenant="none"}']:
        assert value(before, series) == 0.0, series


def test_every_dashboard_query_names_exported_metrics_and_parses(fresh: tuple[Stack, str], tmp_path: Path) -> None:
    names = sample_names(exposition(fresh[0]))
    queries = dashboard_queries()
    assert len(queries) >= 10
    for expr in queries:
        used = METRIC_NAME.findall(expr)
        assert used, expr
        for name in used:
            assert name in names, f"{name} (in {expr!r}) is not exported"
    # promtool parses PromQL: each query as a recording rule, Grafana's interval variable filled in.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": q.replace("$__rate_interval", "1m")} for i, q in enumerate(queries)]}]}
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool(), "check", "rules", str(tmp_path / "dashboard-rules.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_pass_promtool_and_fire_on_the_exported_series(fresh: tuple[Stack, str]) -> None:
    check = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool(), "test", "rules", str(RULES.with_name("rules.test.yaml"))],
                          capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    names = sample_names(fresh[1])
    for name in set(METRIC_NAME.findall(RULES.read_text())):
        assert exported(name, names), name


def test_a_denial_counts_under_its_first_reason(fresh: tuple[Stack, str]) -> None:
    stack, _ = fresh
    series = 'llm_authz_denials_total{reason="missing_credential",tenant="none"}'
    before = value(exposition(stack), series) or 0.0
    assert stack.chat(None).status_code == 401
    assert value(exposition(stack), series) == before + 1


def test_the_trace_id_of_the_request_is_in_its_audit_record(fresh: tuple[Stack, str]) -> None:
    stack, _ = fresh
    response = stack.chat(ACME_KEY, headers={"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"})
    assert response.status_code == 200
    decision_id = response.headers["x-llm-authz-decision-id"]
    records = [r for r in reader.iter_records([stack.audit_dir], skip_partial_tail=True)
               if r["decision_id"] == decision_id]
    assert [r["trace_id"] for r in records] == [TRACE]
    plain = stack.chat(ACME_KEY)
    record = next(r for r in reader.iter_records([stack.audit_dir], skip_partial_tail=True)
                  if r["decision_id"] == plain.headers["x-llm-authz-decision-id"])
    assert record["trace_id"] is None


def test_log_lines_are_json_objects_and_the_start_line_says_pid_and_reload(fresh: tuple[Stack, str]) -> None:
    stack, _ = fresh
    lines = [line for line in stack.authz_log().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line: stderr is a file, so JSON by default
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    start = next(p for p in parsed if "serving on" in p["message"])
    assert f"pid {stack.authz.pid}" in start["message"] and "on file change or SIGHUP" in start["message"]
