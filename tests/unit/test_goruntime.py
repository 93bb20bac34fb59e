"""`llm-authz serve` starts with GOGC set for the OPA library's Go runtime, unless the operator set it."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from llm_authz import cli
from llm_authz.engine import goruntime


def test_reexecs_once_with_gogc(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.delenv("GOGC", raising=False)
    monkeypatch.setattr(goruntime.os, "execve", lambda *a: calls.append(a))
    goruntime.reexec_with_gogc(["serve", "--listen", "127.0.0.1:1"])
    (path, argv, env), = calls
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "llm_authz", "serve", "--listen", "127.0.0.1:1"]
    assert env["GOGC"] == goruntime.GOGC_DEFAULT


def test_the_operators_gogc_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOGC", "100")
    monkeypatch.setattr(goruntime.os, "execve", lambda *a: pytest.fail("must not re-exec"))
    goruntime.reexec_with_gogc(["serve"])


def test_main_called_with_arguments_never_reexecs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GOGC", raising=False)
    monkeypatch.setattr(goruntime.os, "execve", lambda *a: pytest.fail("must not re-exec"))
    monkeypatch.setattr(cli, "cmd_serve", lambda args: 0)
    assert cli.main(["serve"]) == 0
