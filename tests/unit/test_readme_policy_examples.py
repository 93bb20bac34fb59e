"""The README's policy examples run as written: `policy eval --tenants`, and a module of one's own
that gives its reason a status (`extra_status`)."""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def run(argv: list[str], cwd: Path = REPO) -> dict:
    out = subprocess.run([sys.executable, "-m", "llm_authz", *argv], capture_output=True, cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def test_the_readme_policy_eval_command_reproduces_the_decision_serve_made():
    line = next(ln for ln in README.splitlines() if "llm-authz policy eval" in ln)
    argv = shlex.split(line)
    assert argv[0].endswith("llm-authz") and "--tenants" in argv
    result = run(argv[1:])["result"]
    assert result["allow"] is True and result["headers"] == {"x-llm-authz-tier": "premium"}


def test_without_tenants_the_same_input_is_denied():
    result = run(["policy", "eval", "-d", "policies/rego", "-i", "docs/examples/chat-input.json",
                  "data.llm.authz.decision"])["result"]
    assert result["allow"] is False and result["reasons"] == ["tenant_mismatch"]


def test_the_readme_module_of_ones_own_names_its_status(tmp_path):
    block = re.search(r"```rego\n(package llm\.authz\n.*?extra_status.*?)```", README, re.S)
    assert block, "the README's extra_reasons/extra_status example"
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies" / "rego", policies)
    (policies / "llm" / "streaming.rego").write_text(block.group(1))
    doc = json.loads((REPO / "docs" / "examples" / "chat-input.json").read_text())
    free = copy.deepcopy(doc)
    free["identity"].update(tenant="hobbyist", subject="ak_hobbyist_1", key_id="ak_hobbyist_1")
    free["model"]["name"] = "llama-3-8b"
    free["payload"].update(stream=True, max_tokens=16)
    (tmp_path / "free.json").write_text(json.dumps(free))
    argv = ["policy", "eval", "-d", str(policies), "--tenants", str(REPO / "tenants"), "-i", str(tmp_path / "free.json"),
            "data.llm.authz.decision"]
    result = run(argv)["result"]
    assert result["reasons"] == ["stream_not_allowed"] and result["status"] == 402
    free["payload"]["stream"] = False
    (tmp_path / "free.json").write_text(json.dumps(free))
    assert run(argv)["result"]["allow"] is True


def test_the_readme_opa_envoy_serve_line_loads(capsys):
    from llm_authz import cli

    line = next(ln for ln in README.splitlines() if "serve --policies" in ln and "--entrypoint" in ln)
    argv = shlex.split(line)
    policies = argv[argv.index("--policies") + 1]
    entrypoint = argv[argv.index("--entrypoint") + 1]
    assert cli.main(["policy", "check", "--policies", str(REPO / policies), "--tenants", str(REPO / "tenants"),
                     "--entrypoint", entrypoint]) == 0
    assert capsys.readouterr().out.startswith("ok: 1 modules")
