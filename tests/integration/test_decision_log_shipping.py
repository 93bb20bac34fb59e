"""`serve --decision-log-url`: a real collector process is killed and restarted while traffic goes
through Envoy, llm-authz itself is restarted, and every decision id still arrives, in order,
as OPA decision-log events; no check fails or waits because of the collector."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llm_authz.audit import reader
from llm_authz.demo import processes
from tests.conftest import ACME_KEY, FREE_KEY, REPO, start_stack

pytestmark = pytest.mark.integration


def _collector(port: int, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tests.decision_log_collector", str(port), str(out)], cwd=REPO)
    processes.wait_for_port(port, proc=proc)
    return proc


def _received(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line]


class Traffic:
    """Chat requests through Envoy in a thread; keeps every answer's status and decision id."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.statuses: list[int] = []
        self.decision_ids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            key, model = (ACME_KEY, "gpt-4o") if i % 3 else (FREE_KEY, "gpt-4o")
            try:
                r = self.stack.chat(key, model=model)
            except httpx.HTTPError:
                continue
            self.statuses.append(r.status_code)
            if r.status_code == 200:
                self.decision_ids.add(r.json()["received_headers"]["x-llm-authz-decision-id"])
            elif r.headers.get("content-type", "").startswith("application/json") and "error" in r.json():
                did = r.json()["error"].get("decision_id")
                if did:
                    self.decision_ids.add(did)
            i += 1

    def wait_for(self, answered: int, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while len(self.statuses) < answered:
            assert time.monotonic() < end, f"only {len(self.statuses)} checks answered"
            time.sleep(0.05)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_every_decision_arrives_through_collector_outage_and_restart(tmp_path):
    port = processes.free_port()
    out = tmp_path / "received.jsonl"
    collector = _collector(port, out)
    config = tmp_path / "llm-authz.yaml"
    config.write_text("audit_segment_bytes: 65536\naudit_durability: buffered\n")  # rotate often
    stack, stop_all = start_stack(tmp_path / "stack", [
        "--config", str(config), "--decision-log-url", f"http://127.0.0.1:{port}/logs"])
    authz = stack.authz
    try:
        with Traffic(stack) as traffic:
            traffic.wait_for(10)
            collector.send_signal(signal.SIGKILL)  # the collector dies mid-traffic
            collector.wait()
            traffic.wait_for(len(traffic.statuses) + 15)  # checks go on without the collector
            collector = _collector(port, out)
            traffic.wait_for(len(traffic.statuses) + 10)
        # Checks answered during the outage were answered as usual (no 5xx).
        assert set(traffic.statuses) <= {200, 403}, sorted(set(traffic.statuses))
        seen_before_restart = set(traffic.decision_ids)

        # llm-authz restarts: it resumes from its cursor.
        processes.stop(authz)
        authz = processes.start_llm_authz(list(stack.authz.args[4:]), stack.workdir)
        processes.wait_for_port(stack.authz_port, proc=authz)
        with Traffic(stack) as traffic_after:
            traffic_after.wait_for(10)
        assert 200 in traffic_after.statuses

        logged = [r["decision_id"] for r in reader.iter_records([stack.audit_dir])]
        assert len(logged) >= 45
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(logged) <= {e["decision_id"] for e in _received(out)}:
            time.sleep(0.3)
        events = _received(out)
    finally:
        processes.stop(authz)
        stop_all()
        collector.terminate()
        collector.wait(10)

    got = [e["decision_id"] for e in events]
    assert set(logged) == set(got)  # every decision, nothing else
    assert (seen_before_restart | traffic_after.decision_ids) <= set(got)  # every id a client was given
    first_arrival = list(dict.fromkeys(got))
    assert first_arrival == logged  # in the log's order (one chain: seq order)
    event = events[-1]
    assert {"decision_id", "path", "input", "result", "timestamp", "labels"} <= set(event)
    assert event["path"] == "llm/authz/decision" and event["labels"]["id"] == "llm-authz"
    assert "sk-llm" not in json.dumps(events)  # no credential leaves in an event
    cursor = json.loads((stack.audit_dir / "cursors" / "decision-log.json").read_text())
    assert cursor["name"] == "decision-log" and cursor["chains"]["main"]["seq"] > 0
