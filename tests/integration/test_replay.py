"""Replay of a log made by real traffic through Envoy: verify mode, impact mode, reports, regression tests."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ACME_KEY, FREE_KEY, REPO, start_stack

pytestmark = pytest.mark.integration


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_authz", "replay", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180)


def candidate_without_acme_gpt4o(running, tmp_path):
    """The running tenants, with gpt-4o taken away from acme."""
    candidate = tmp_path / "tenants"
    shutil.copytree(running.tenants_dir, candidate)
    acme = candidate / "acme.yaml"
    acme.write_text("\n".join(line for line in acme.read_text().splitlines() if not line.startswith("  gpt-4o: ")))
    return candidate


def decision_id(r) -> str:
    return r.headers["x-llm-authz-decision-id"]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    """A log of mixed traffic spanning two policy revisions (a tenant file changed, then SIGHUP)."""
    tmp = tmp_path_factory.mktemp("replay")
    running, stop_all = start_stack(tmp)
    ids: dict[str, list[str]] = {"acme_gpt4o": [], "free_gpt4o": [], "free_mistral": [], "probe_denied": [],
                                 "all": []}
    try:
        for _ in range(4):
            r = running.chat(ACME_KEY)
            assert r.status_code == 200
            ids["acme_gpt4o"].append(decision_id(r))
            r = running.chat(FREE_KEY, model="gpt-4o")
            assert r.status_code == 403
            ids["free_gpt4o"].append(decision_id(r))
            for r in (running.chat(FREE_KEY, model="llama-3-8b"), running.chat(None),
                      running.post("/v1/embeddings", json={"model": "text-embed-3", "input": "x"},
                                   headers={"authorization": f"Bearer {ACME_KEY}"})):
                ids["all"].append(decision_id(r))
        hobbyist = running.tenants_dir / "hobbyist.yaml"
        hobbyist.write_text(hobbyist.read_text().replace(
            "llama-3-8b: {operations: [chat, completions]}",
            "llama-3-8b: {operations: [chat, completions]}\n  mistral-7b: {operations: [chat]}"))
        running.authz.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while (probe := running.chat(FREE_KEY, model="mistral-7b")).status_code != 200:
            ids["probe_denied"].append(decision_id(probe))
            assert time.monotonic() < deadline, "the reload did not take effect"
            time.sleep(0.2)
        ids["all"].append(decision_id(probe))
        for _ in range(3):
            r = running.chat(FREE_KEY, model="mistral-7b")
            assert r.status_code == 200
            ids["free_mistral"].append(decision_id(r))
    finally:
        stop_all()
    ids["all"] += ids["acme_gpt4o"] + ids["free_gpt4o"] + ids["free_mistral"] + ids["probe_denied"]
    return running, ids


def test_verify_mode_finds_every_decision_as_logged(traffic):
    running, ids = traffic
    r = replay(str(running.audit_dir), "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["mode"] == "verify" and report["verified"] is True
    assert report["totals"]["mismatch"] == 0 and report["totals"]["unreproducible"] == 0
    assert report["totals"]["match"] == report["records"] >= len(ids["all"])
    assert len(report["revisions"]) == 2


def test_text_report(traffic):
    running, _ = traffic
    r = replay(str(running.audit_dir), "--jobs", "1")
    assert r.returncode == 0 and "verify mode" in r.stdout and "mismatch 0" in r.stdout


def test_impact_of_a_candidate_lists_exactly_the_flips(traffic, tmp_path):
    running, ids = traffic
    candidate = candidate_without_acme_gpt4o(running, tmp_path)
    free = candidate / "hobbyist.yaml"
    free.write_text(free.read_text().replace("mistral-7b: {operations: [chat]}",
                                             "mistral-7b: {operations: [chat]}\n  gpt-4o: {operations: [chat]}"))
    r = replay(str(running.audit_dir), "--tenants", str(candidate), "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    flips = {f["decision_id"]: f for f in report["flips"]}
    # The reload probes denied under the first revision are allowed by the candidate too.
    assert set(flips) == set(ids["acme_gpt4o"]) | set(ids["free_gpt4o"]) | set(ids["probe_denied"])
    for did in ids["acme_gpt4o"]:
        assert flips[did]["before"]["allowed"] and not flips[did]["after"]["allowed"]
        assert flips[did]["after"]["reasons"] == ["model_not_allowed"] and flips[did]["direction"] == "allow→deny"
    for did in ids["free_gpt4o"]:
        assert flips[did]["direction"] == "deny→allow" and flips[did]["tenant"] == "hobbyist"
    summary = {(s["tenant"], s["model"], s["direction"]): s["count"] for s in report["summary"]}
    expected = {("acme", "gpt-4o", "allow→deny"): 4, ("hobbyist", "gpt-4o", "deny→allow"): 4}
    if ids["probe_denied"]:
        expected[("hobbyist", "mistral-7b", "deny→allow")] = len(ids["probe_denied"])
    assert summary == expected


def test_emitted_tests_pass_policy_test(traffic, tmp_path):
    running, ids = traffic
    candidate = candidate_without_acme_gpt4o(running, tmp_path)
    r = replay(str(running.audit_dir), "--tenants", str(candidate), "--emit-tests", str(tmp_path / "emitted"))
    assert r.returncode == 0, r.stderr
    emitted = (tmp_path / "emitted" / "replay_regressions_test.rego").read_text()
    assert emitted.count("\ntest_") == len(ids["acme_gpt4o"]) + len(ids["probe_denied"])
    t = subprocess.run([sys.executable, "-m", "llm_authz", "policy", "test", str(REPO / "policies" / "rego"),
                        str(tmp_path / "emitted")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert t.returncode == 0, t.stdout + t.stderr


def test_filters(traffic):
    running, ids = traffic
    report = json.loads(replay(str(running.audit_dir), "--tenant", "hobbyist", "--format", "json").stdout)
    # gpt-4o, llama, mistral, and the reload probes
    assert report["records"] == 4 + 4 + len(ids["free_mistral"]) + len(ids["probe_denied"]) + 1
    later = json.loads(replay(str(running.audit_dir), "--since", "2999-01-01T00:00:00Z", "--format", "json").stdout)
    assert later["records"] == 0


def test_a_tampered_log_is_refused(traffic, tmp_path):
    running, ids = traffic
    copy = tmp_path / "audit"
    shutil.copytree(running.audit_dir, copy)
    segment = sorted(copy.glob("decisions-*.jsonl"))[0]
    target = ids["acme_gpt4o"][1]
    lines = segment.read_text().splitlines(keepends=True)
    lines = [line.replace('"allow":true', '"allow":false') if target in line else line for line in lines]
    segment.write_text("".join(lines))
    r = replay(str(copy))
    assert r.returncode == 1 and "refused" in r.stderr
    r = replay(str(copy), "--no-verify", "--format", "json")
    assert r.returncode == 1
    assert [m["decision_id"] for m in json.loads(r.stdout)["mismatches"]] == [target]


def test_bad_arguments_exit_2(traffic, tmp_path):
    running, _ = traffic
    assert replay(str(tmp_path / "nothing")).returncode in (1, 2)
    assert replay(str(running.audit_dir), "--since", "yesterday").returncode == 2
    assert replay(str(running.audit_dir), "--policies", str(tmp_path / "missing")).returncode == 2


def test_html_report_opens_in_chromium(traffic, tmp_path):
    running, _ = traffic
    candidate = tmp_path / "tenants"
    shutil.copytree(running.tenants_dir, candidate)
    (candidate / "acme.yaml").write_text((candidate / "acme.yaml").read_text().replace("text-embed-3", "text-embed-4"))
    out = tmp_path / "report.html"
    assert replay(str(running.audit_dir), "--tenants", str(candidate), "--format", "html", "--output", str(out)).returncode == 0
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (apt-get install chromium; .ci/run does it)")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=90).stdout
    for table in ("totals", "summary", "changes", "revisions"):
        assert f'<table id="{table}"' in dom
    assert "text-embed-3" in dom and "allow→deny" in dom


def test_unreproducible_decisions_are_reported_as_such(tmp_path):
    shutil.copytree(REPO / "policies" / "rego", tmp_path / "policies")
    policy = tmp_path / "policies" / "llm" / "authz.rego"
    policy.write_text(policy.read_text() + '\nreasons contains "clock_went_back" if time.now_ns() < 0\n')
    running, stop_all = start_stack(tmp_path)
    try:
        assert running.chat(ACME_KEY).status_code == 200
    finally:
        stop_all()
    r = replay(str(running.audit_dir), "--format", "json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["totals"]["match"] == 0
    assert report["totals"]["unreproducible"] == 1 and "time.now_ns" in report["unreproducible"][0]["detail"]
    assert replay(str(running.audit_dir), "--strict").returncode == 1
