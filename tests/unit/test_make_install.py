"""`make install` installs the Debian packages whose programs the tests start, only when missing.

apt-get is replaced by a recording script first on PATH: the test checks what the Makefile asks
of it, without changing the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_make(tmp_path: Path, packages: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "apt-get.calls"
    for tool in ("apt-get", "sudo"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n' + ('exec "$@"\n' if tool == "sudo" else ""))
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run([shutil.which("make") or "make", "-s", "system-packages", f"SYSTEM_PACKAGES={packages}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    return out, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is what is under test")
def test_missing_programs_are_installed_from_their_packages(tmp_path: Path) -> None:
    out, calls = run_make(tmp_path, "sh:dash no-such-program-x:redis-server no-such-program-y:prometheus")
    assert out.returncode == 0, out.stderr
    apt = [c.removeprefix("sudo ") for c in calls if c.startswith("apt-get")]
    assert apt == ["apt-get update -qq", "apt-get install -y -qq redis-server prometheus"]
    assert any(c.startswith("sudo ") for c in calls) == (os.getuid() != 0)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is what is under test")
def test_nothing_is_installed_when_every_program_is_there(tmp_path: Path) -> None:
    out, calls = run_make(tmp_path, "sh:dash ls:coreutils")
    assert out.returncode == 0 and calls == []


def test_ci_only_runs_make_test() -> None:
    commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands[-1] == "make test" and not [c for c in commands if "apt-get" in c]
