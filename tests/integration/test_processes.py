"""`serve --processes 2`: two processes on one port both decide through Envoy, each in its own audit chain."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from llm_authz import cli
from llm_authz.audit import chain, reader
from llm_authz.demo import processes
from tests.conftest import ACME_KEY, start_stack

REQUESTS = 60


def new_connection_per_check(config: dict) -> None:
    """Envoy opens a connection per check: the kernel's SO_REUSEPORT choice is then made per check,
    so a handful of checks reaches both processes whatever the hash (deploy/ recycles every 1000)."""
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "llm_authz":
            options = cluster["typed_extension_protocol_options"][
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            options.setdefault("common_http_protocol_options", {})["max_requests_per_connection"] = 1


def chains_seen(audit_dir) -> dict[str, int]:
    seen: dict[str, int] = {}
    for entry in reader.iter_entries([audit_dir], kinds=[chain.DECISION], skip_partial_tail=True):
        seen[entry.chain] = seen.get(entry.chain, 0) + 1
    return seen


def metric_total(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    running, stop_all = start_stack(tmp_path_factory.mktemp("processes"), ["--processes", "2"],
                                    envoy_edit=new_connection_per_check)
    try:
        processes.wait_for_port(running.metrics_port, timeout=120, proc=running.authz)  # after every worker is ready
        yield running, stop_all
    finally:
        stop_all()


def test_two_processes_on_one_port_both_decide_through_envoy(two_processes):
    stack, _ = two_processes
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: stack.chat(ACME_KEY), range(REQUESTS)))
    denied = stack.chat(ACME_KEY, model="gpt-5")
    assert [a.status_code for a in answers] == [200] * REQUESTS
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
    seen = chains_seen(stack.audit_dir)
    assert set(seen) == {"main", "w1"} and sum(seen.values()) == REQUESTS + 1, seen
    # Every answered check is in exactly one chain.
    ids = {e.record["decision_id"] for e in reader.iter_entries([stack.audit_dir], kinds=[chain.DECISION],
                                                                skip_partial_tail=True)}
    assert denied.json()["error"]["decision_id"] in ids and len(ids) == REQUESTS + 1
    # One metrics port counts the checks of both processes.
    assert metric_total(stack.metrics_port, "llm_authz_checks_total") == REQUESTS + 1


def test_sighup_reloads_every_process(two_processes):
    stack, _ = two_processes

    def revisions_per_chain() -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in reader.iter_entries([stack.audit_dir], kinds=[chain.REVISION], skip_partial_tail=True):
            counts[entry.chain] = counts.get(entry.chain, 0) + 1
        return counts

    assert revisions_per_chain() == {"main": 1, "w1": 1}
    os.kill(stack.authz.pid, signal.SIGHUP)
    wait_until(lambda: revisions_per_chain() == {"main": 2, "w1": 2})
    wait_until(lambda: metric_total(stack.metrics_port, "llm_authz_policy_reloads_total") == 2)


def worker_pids(supervisor: int) -> list[int]:
    children = open(f"/proc/{supervisor}/task/{supervisor}/children").read().split()
    return [int(p) for p in children if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]


def test_a_worker_that_dies_is_started_again_and_its_chain_recovers(two_processes):
    stack, _ = two_processes
    before = worker_pids(stack.authz.pid)
    assert len(before) == 2
    os.kill(before[1], signal.SIGKILL)
    wait_until(lambda: any(True for _ in reader.iter_entries([stack.audit_dir], kinds=[chain.RECOVERY],
                                                             skip_partial_tail=True)), timeout=120)
    after = worker_pids(stack.authz.pid)
    assert len(after) == 2 and before[1] not in after and before[0] in after
    assert stack.chat(ACME_KEY).status_code == 200


def test_the_directory_verifies_and_replays_as_one_log(two_processes, capsys):
    stack, stop_all = two_processes
    stop_all()  # each worker closes its chain with a shutdown checkpoint
    assert stack.authz.returncode == 0
    assert cli.main(["audit", "verify", str(stack.audit_dir)]) == 0
    assert "2 chains (main seq 1.." in capsys.readouterr().out
    assert cli.main(["replay", str(stack.audit_dir), "--format", "json", "--jobs", "1"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["records"] == REQUESTS + 2 and not report["mismatches"]


def test_several_processes_need_a_fixed_port(tmp_path, capsys):
    assert cli.main(["serve", "--processes", "2", "--listen", "127.0.0.1:0", "--audit-dir", str(tmp_path)]) == 1
    assert "need a fixed port" in capsys.readouterr().err


CONCURRENT = 32
PER_CLIENT = 40


@pytest.fixture(scope="module")
def two_processes_deploy_envoy(tmp_path_factory):
    """Two processes behind deploy/envoy/envoy.yaml exactly as shipped (quotas off: this is about load)."""
    tmp = tmp_path_factory.mktemp("processes-deploy")
    (tmp / "config.yaml").write_text("quota_backend: none\n")
    running, stop_all = start_stack(tmp, ["--processes", "2", "--config", str(tmp / "config.yaml")])
    try:
        processes.wait_for_port(running.metrics_port, timeout=120, proc=running.authz)
        yield running
    finally:
        stop_all()


def test_many_checks_at_once_through_the_shipped_envoy_config_are_all_answered(two_processes_deploy_envoy):
    """Envoy multiplexes the checks of many requests on its connections to llm-authz: none may be
    refused by the gRPC server (a refused stream is a 5xx from Envoy, not a decision)."""
    stack = two_processes_deploy_envoy
    url = stack.url + "/v1/chat/completions"
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}

    def client(_: int) -> list[int]:
        with httpx.Client(headers={"authorization": f"Bearer {ACME_KEY}"}, timeout=30) as http:
            return [http.post(url, json=body).status_code for _ in range(PER_CLIENT)]

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = [code for codes in pool.map(client, range(CONCURRENT)) for code in codes]
    # Envoy's own count of checks that got no answer from llm-authz (a refused or reset stream)
    # and the 500 it turns them into; every check was decided and recorded.
    assert envoy_stat(stack.admin_port, "http.ingress.ext_authz.error") == 0
    assert envoy_stat(stack.admin_port, "http.ingress.ext_authz.ok") == len(answers)
    assert 500 not in answers, {code: answers.count(code) for code in set(answers)}
    assert sum(chains_seen(stack.audit_dir).values()) == len(answers)


def envoy_stat(admin_port: int, name: str) -> int:
    for line in httpx.get(f"http://127.0.0.1:{admin_port}/stats", params={"filter": f"^{name}$"}, timeout=5).text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0
