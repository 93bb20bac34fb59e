"""Reload without a signal: a ConfigMap-shaped policy directory, swapped as the kubelet swaps it,
decides differently through Envoy; a revision that does not compile is refused and the old one
keeps deciding; a metric and a JSON log line say so."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ACME_KEY, REPO, Stack, start_stack
from tests.kubelet_volume import KubeletVolume, files_of

pytestmark = pytest.mark.integration

ONLY = "package llm.authz\n\nimport rego.v1\n\ndecision := input.model.name == {model!r}\n"
BROKEN = "package llm.authz\n\ndecision := input.model.name ==\n"
WAIT_SECONDS = 20.0  # an upper bound for the wait, not a measurement (bench/watch_reload.py measures)


def only(model: str) -> dict[str, str]:
    return {"llm/authz.rego": ONLY.format(model=model).replace("'", '"')}


def statuses(stack: Stack) -> tuple[int, int]:
    return stack.chat(ACME_KEY, model="gpt-4o").status_code, stack.chat(ACME_KEY, model="gpt-4o-mini").status_code


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"not within {WAIT_SECONDS}s: {what}")


def metric(stack: Stack, series: str) -> float | None:
    for line in httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def json_log(stack: Stack) -> list[dict]:
    return [json.loads(line) for line in stack.authz_log().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, KubeletVolume]]:
    tmp = tmp_path_factory.mktemp("watch")
    policies = KubeletVolume(tmp / "policies", only("gpt-4o"))
    KubeletVolume(tmp / "tenants", files_of(REPO / "tenants"))
    stack, stop_all = start_stack(tmp)
    yield stack, policies
    stop_all()


def test_starts_from_configmap_directories_and_picks_up_a_kubelet_swap(mounted: tuple[Stack, KubeletVolume]) -> None:
    stack, policies = mounted
    assert statuses(stack) == (200, 403)
    assert metric(stack, 'llm_authz_policy_reloads_total{outcome="error"}') == 0.0  # exists from start
    policies.update(only("gpt-4o-mini"))
    wait_for(lambda: statuses(stack) == (403, 200), "the swapped policy decides")
    assert metric(stack, 'llm_authz_policy_reloads_total{outcome="ok"}') >= 1
    assert any(r.get("event") == "reload" and r.get("outcome") == "ok" and r.get("trigger") == "watch"
               for r in json_log(stack))


def test_a_revision_that_does_not_compile_is_refused_and_the_old_one_keeps_deciding(
        mounted: tuple[Stack, KubeletVolume]) -> None:
    stack, policies = mounted
    wait_for(lambda: statuses(stack) == (403, 200), "the previous revision decides")
    errors = metric(stack, 'llm_authz_policy_reloads_total{outcome="error"}')
    policies.update({"llm/authz.rego": BROKEN})
    wait_for(lambda: metric(stack, 'llm_authz_policy_reloads_total{outcome="error"}') == errors + 1,
             "the broken revision is counted as refused")
    assert statuses(stack) == (403, 200)
    refused = [r for r in json_log(stack) if r.get("event") == "reload" and r.get("outcome") == "error"]
    assert refused and refused[-1]["level"] == "ERROR" and "authz.rego" in refused[-1]["message"]
    assert refused[-1]["trigger"] == "watch"


def test_no_watch_leaves_changes_to_sighup(tmp_path: Path) -> None:
    policies = KubeletVolume(tmp_path / "policies", only("gpt-4o"))
    KubeletVolume(tmp_path / "tenants", files_of(REPO / "tenants"))
    stack, stop_all = start_stack(tmp_path, serve_args=["--no-watch"])
    try:
        policies.update(only("gpt-4o-mini"))
        time.sleep(2.0)  # well past the watcher's debounce: a watching server would have reloaded
        assert statuses(stack) == (200, 403)
        stack.authz.send_signal(signal.SIGHUP)
        wait_for(lambda: statuses(stack) == (403, 200), "SIGHUP reloads")
    finally:
        stop_all()
