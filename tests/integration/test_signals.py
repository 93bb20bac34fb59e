"""Credential anomalies through Envoy: one key from two distant networks, 20× the usual tokens,
deny for one tenant and flag for another, the signals in the audit record, replay exact.

Distant networks are loopback addresses (127.0.0.1 and 127.0.0.2, which the client binds) that
an operator network-label file places in different countries; public addresses are sent as
CheckRequests straight over gRPC. Nothing leaves this machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc

from llm_authz.audit import reader
from tests.conftest import FREE_KEY, REPO, Stack, start_stack
from tests.helpers import check_request

pytestmark = pytest.mark.integration

TRAVELLER = "sk-llm-acme-traveller-test-7a21"
STEADY = "sk-llm-acme-steady-test-3f90"
BURSTY = "sk-llm-acme-bursty-test-c4e8"
GRPC_KEY = "sk-llm-acme-grpc-test-91b2"
ACCESS_LOG_FORMAT = "flags=%DYNAMIC_METADATA(envoy.filters.http.ext_authz:flags)%\n"


def _tenants(tmp: Path) -> None:
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    acme_path = tmp / "tenants" / "acme.yaml"
    acme = yaml.safe_load(acme_path.read_text())
    acme["signals"] = {"action": "deny", "travel_minutes": 60, "max_score": 6}
    for key_id, key in (("traveller", TRAVELLER), ("steady", STEADY), ("bursty", BURSTY), ("grpc", GRPC_KEY)):
        acme["credentials"]["api_keys"].append({"id": key_id, "sha256": hashlib.sha256(key.encode()).hexdigest(),
                                                "scopes": ["inference:invoke"]})
    acme_path.write_text(yaml.safe_dump(acme))
    free_path = tmp / "tenants" / "hobbyist.yaml"
    free = yaml.safe_load(free_path.read_text())
    free["signals"] = {"action": "flag"}
    free["limits"]["requests_per_minute"] = 1000
    free_path.write_text(yaml.safe_dump(free))
    (tmp / "networks.yaml").write_text("networks:\n"
                                       "  - {cidr: 127.0.0.1/32, name: london-office, country: GB}\n"
                                       "  - {cidr: 127.0.0.2/32, name: tokyo-vpn, country: JP}\n")


def _access_log(path: Path):
    def edit(config: dict) -> None:
        listener = next(x for x in config["static_resources"]["listeners"] if x["name"] == "ingress")
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path), "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}}}]
    return edit


@pytest.fixture(scope="module")
def signals_stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("signals")
    _tenants(tmp)
    running, stop_all = start_stack(tmp, ["--signals-networks", str(tmp / "networks.yaml")],
                                    envoy_edit=_access_log(tmp / "access.log"))
    yield running
    stop_all()


def chat_from(stack: Stack, source: str, key: str, model: str = "gpt-4o", **body) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **body}
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as client:
        return client.post(stack.url + "/v1/chat/completions", json=payload,
                           headers={"authorization": f"Bearer {key}"})


def test_one_key_from_two_distant_networks_is_denied_for_a_deny_tenant(signals_stack):
    assert chat_from(signals_stack, "127.0.0.1", TRAVELLER).status_code == 200
    r = chat_from(signals_stack, "127.0.0.2", TRAVELLER)
    assert r.status_code == 403 and r.json()["error"]["code"] == "credential_anomaly"
    assert "tokyo" not in r.text and "london" not in r.text  # the client is not told what was seen


def test_the_same_for_a_flag_tenant_is_allowed_and_flagged_upstream_and_in_the_access_log(signals_stack):
    assert chat_from(signals_stack, "127.0.0.1", FREE_KEY, model="llama-3-8b").status_code == 200
    r = chat_from(signals_stack, "127.0.0.2", FREE_KEY, model="llama-3-8b")
    assert r.status_code == 200
    assert r.json()["received_headers"]["x-llm-authz-flags"] == "credential_anomaly"
    # a client cannot set the flag header itself
    spoofed = httpx.post(signals_stack.url + "/v1/chat/completions", timeout=10,
                         json={"model": "llama-3-8b", "messages": []},
                         headers={"authorization": f"Bearer {FREE_KEY}", "x-llm-authz-flags": "none"})
    assert "x-llm-authz-flags" not in spoofed.json()["received_headers"] or \
        spoofed.json()["received_headers"]["x-llm-authz-flags"] == "credential_anomaly"
    deadline = time.monotonic() + 10  # Envoy flushes its access log about once a second
    while "flags=credential_anomaly" not in (signals_stack.workdir / "access.log").read_text().splitlines():
        assert time.monotonic() < deadline, "the flag never reached Envoy's access log"
        time.sleep(0.2)


def test_public_addresses_over_grpc_are_placed_in_their_countries(signals_stack):
    with grpc.insecure_channel(f"127.0.0.1:{signals_stack.authz_port}") as channel:
        authz = external_auth_pb2_grpc.AuthorizationStub(channel)
        headers = {"authorization": f"Bearer {GRPC_KEY}"}
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        first = authz.Check(check_request(headers=headers, body=body, source="81.2.69.160"), timeout=5)
        assert first.HasField("ok_response")
        again = authz.Check(check_request(headers=headers, body=body, source="81.2.69.161"), timeout=5)
        assert again.HasField("ok_response")  # the same network
        moved = authz.Check(check_request(headers=headers, body=body, source="8.8.8.8"), timeout=5)
        assert moved.denied_response.status.code == 403 and "credential_anomaly" in moved.denied_response.body


def test_twenty_times_the_usual_tokens_is_anomalous_and_a_steady_key_is_not(signals_stack):
    for _ in range(22):
        assert chat_from(signals_stack, "127.0.0.1", STEADY, max_tokens=100).status_code == 200
        assert chat_from(signals_stack, "127.0.0.1", BURSTY, max_tokens=100).status_code == 200
    assert chat_from(signals_stack, "127.0.0.1", STEADY, max_tokens=100).status_code == 200
    r = chat_from(signals_stack, "127.0.0.1", BURSTY, max_tokens=2000)
    assert r.status_code == 403 and r.json()["error"]["code"] == "credential_anomaly"


def _records(stack: Stack) -> list[dict]:
    return list(reader.iter_records([stack.audit_dir], skip_partial_tail=True))


def test_the_signals_are_in_the_audit_record(signals_stack):
    records = [r for r in _records(signals_stack) if r["reasons"] == ["credential_anomaly"]]
    kinds = {tuple(r["result"]["anomalies"]) for r in records}
    assert ("impossible_travel",) in kinds and ("baseline",) in kinds
    travel = next(r for r in records if r["result"]["anomalies"] == ["impossible_travel"]
                  and r["input"]["signals"]["network"]["label"] == "tokyo-vpn")
    network = travel["input"]["signals"]["network"]
    assert network["country"] == "JP" and network["last"]["country"] == "GB"
    assert network["last"]["seconds_ago"] < 60
    burst = next(r for r in records if r["result"]["anomalies"] == ["baseline"])
    baseline = burst["input"]["signals"]["baseline"]
    assert baseline["established"] and baseline["score"] > 6
    assert baseline["features"]["tokens_per_request"]["z"] > 6
    assert all(r["input"]["signals"] is None for r in _records(signals_stack)
               if r["tenant"] not in ("acme", "hobbyist"))
    metrics = httpx.get(f"http://127.0.0.1:{signals_stack.metrics_port}/metrics").text
    assert 'llm_authz_credential_anomalies_total{action="deny",kind="impossible_travel",tenant="acme"} 2.0' in metrics
    assert 'llm_authz_credential_anomalies_total{action="flag",kind="impossible_travel",tenant="hobbyist"}' in metrics


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_authz", "replay", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_replay_reproduces_every_decision_and_shows_what_a_new_threshold_would_deny(signals_stack, tmp_path):
    r = replay(str(signals_stack.audit_dir), "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["totals"]["mismatch"] == 0 and report["totals"]["match"] == report["records"]
    # impact: hobbyist moves from flag to deny
    candidate = tmp_path / "candidate"
    shutil.copytree(signals_stack.tenants_dir, candidate)
    free = candidate / "hobbyist.yaml"
    free.write_text(free.read_text().replace("action: flag", "action: deny"))
    impact = json.loads(replay(str(signals_stack.audit_dir), "--tenants", str(candidate), "--format", "json").stdout)
    flips = impact["flips"]
    flagged = [r for r in _records(signals_stack) if r["tenant"] == "hobbyist" and r["result"].get("flags")]
    assert len(flips) == len(flagged) == 2  # the move to Tokyo and the move back, each flagged
    assert all(f["direction"] == "allow→deny" and f["after"]["reasons"] == ["credential_anomaly"] for f in flips)
