"""The command line as users run it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = REPO, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_authz", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, input=stdin)


@pytest.mark.parametrize("command", [["serve"], ["policy", "eval"], ["policy", "test"], ["policy", "check"],
                                     ["keys", "new"], ["schema"]])
def test_every_command_has_help(command):
    r = cli(*command, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


def test_policy_check_passes_on_the_repository():
    r = cli("policy", "check")
    assert r.returncode == 0, r.stderr
    assert "3 tenants" in r.stdout


def test_policy_check_names_file_field_and_line(tmp_path):
    shutil.copytree(REPO / "tenants", tmp_path / "tenants")
    (tmp_path / "tenants" / "acme.yaml").write_text(
        (REPO / "tenants" / "acme.yaml").read_text().replace("allowed_cidrs: [\"0.0.0.0/0\"", "allowed_cidrs: [\"300.0.0.0/0\""))
    (tmp_path / "tenants" / "typo.yaml").write_text("id: typo\ntier: free\nmodelz: {}\n")
    (tmp_path / "tenants" / "wrongname.yaml").write_text("id: other\ntier: free\n")
    r = cli("policy", "check", "--tenants", str(tmp_path / "tenants"))
    assert r.returncode == 1
    assert "acme.yaml:11: network.allowed_cidrs: '300.0.0.0/0' is not a CIDR" in r.stderr
    assert "typo.yaml:3: modelz: Extra inputs are not permitted" in r.stderr
    assert "wrongname.yaml:1: id: id 'other' must match the file name 'wrongname'" in r.stderr


def test_policy_check_reports_a_rego_compile_error(tmp_path):
    shutil.copytree(REPO / "policies" / "rego", tmp_path / "rego")
    (tmp_path / "rego" / "bad.rego").write_text("package bad\nimport rego.v1\nr if { x == 1 }\n")
    r = cli("policy", "check", "--policies", str(tmp_path / "rego"))
    assert r.returncode == 1 and "bad.rego:3" in r.stderr and "unsafe" in r.stderr


def test_policy_eval_prints_result_undefined_and_errors(tmp_path):
    (tmp_path / "p.rego").write_text("package p\nimport rego.v1\nr := input.x * 2\nd := 1 / input.x\n")
    (tmp_path / "in.json").write_text('{"x": 0}')
    r = cli("policy", "eval", "-d", str(tmp_path / "p.rego"), "-i", str(tmp_path / "in.json"), "data.p.r")
    assert r.returncode == 0 and json.loads(r.stdout) == {"result": 0}
    r = cli("policy", "eval", "-d", str(tmp_path / "p.rego"), "data.p.r")
    assert r.returncode == 0 and json.loads(r.stdout) == {"undefined": True}
    r = cli("policy", "eval", "-d", str(tmp_path / "p.rego"), "-i", str(tmp_path / "in.json"), "data.p.d")
    assert r.returncode == 2 and "divide by zero" in r.stderr and r.stdout == ""
    r = cli("policy", "eval", "-d", str(tmp_path / "p.rego"), "-i", "-", "data.p.r", stdin='{"x": 4}')
    assert json.loads(r.stdout) == {"result": 8}


def test_policy_eval_loads_data_files_at_their_directory_path(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "data.json").write_text('{"v": 1}')
    (tmp_path / "top.yaml").write_text("w: 2\n")
    r = cli("policy", "eval", "-d", str(tmp_path), "data")
    assert json.loads(r.stdout) == {"result": {"a": {"b": {"v": 1}}, "w": 2}}


def test_policy_test_runs_repository_tests():
    r = cli("policy", "test", "policies/rego")
    assert r.returncode == 0 and r.stdout.startswith("PASS: ")


def test_policy_test_fails_and_names_the_test(tmp_path):
    (tmp_path / "x_test.rego").write_text(
        "package x_test\nimport rego.v1\ntest_ok if true\ntest_bad if 1 == 2\ntest_err if 1 / 0\n")
    r = cli("policy", "test", str(tmp_path))
    assert r.returncode == 2
    assert "FAIL  data.x_test.test_bad" in r.stdout and "ERROR data.x_test.test_err" in r.stdout
    assert r.stdout.strip().endswith("FAIL: 1/3")


def test_keys_new_prints_the_key_once_and_an_entry_that_matches_it():
    r = cli("keys", "new", "--tenant", "acme", "--scopes", "inference:invoke", "models:read",
            "--expires", "2030-01-01T00:00:00Z")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    key = next(line.strip() for line in lines if line.strip().startswith("sk-llm-"))
    entry = yaml.safe_load(next(line.strip() for line in lines if line.strip().startswith("- {")))[0]
    assert entry["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert entry["scopes"] == ["inference:invoke", "models:read"] and entry["expires"] == "2030-01-01T00:00:00Z"
    assert len(key) > 40


def test_keys_new_rejects_an_expiry_without_zone():
    r = cli("keys", "new", "--tenant", "acme", "--expires", "2030-01-01T00:00:00")
    assert r.returncode == 2 and "time zone" in r.stderr
