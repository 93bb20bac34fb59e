"""Shared fixtures: a real Envoy in front of a real llm-authz and the demo model server, on free ports."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_authz.demo import processes
from llm_authz.demo.upstream import make_server

REPO = processes.REPO
ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"
ACME_READONLY_KEY = "sk-llm-acme-readonly-2c7e91d04b3a5f66"
FREE_KEY = "sk-llm-hobbyist-demo-93a1d7c2e05b4f18"
RESEARCH_KEY = "sk-llm-research-demo-0d4b8e6f1a2c7395"


@dataclass
class Stack:
    """A running Envoy + llm-authz + demo upstream. `url` is Envoy's listener."""

    workdir: Path
    url: str
    authz_port: int
    metrics_port: int
    admin_port: int
    audit_dir: Path
    tenants_dir: Path
    policies_dir: Path
    authz: Any
    envoy: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None,
             content: bytes | None = None, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=json, content=content, headers=headers or {}, timeout=10, **kw)

    def chat(self, key: str | None, model: str = "gpt-4o", headers: dict[str, str] | None = None,
             **body: Any) -> httpx.Response:
        h = {"authorization": f"Bearer {key}"} if key else {}
        h.update(headers or {})
        payload = {"model": model, "messages": [{"role": "user", "content": "hello"}], **body}
        return self.post("/v1/chat/completions", json=payload, headers=h)

    def authz_log(self) -> str:
        return (self.workdir / "llm-authz.log").read_text(errors="replace")


def start_stack(tmp: Path, serve_args: list[str] | None = None, tenants: Path | None = None,
                policies: Path | None = None, envoy_edit: Callable[[dict], None] | None = None,
                env: dict[str, str] | None = None) -> tuple[Stack, Callable[[], None]]:
    """Start the three processes; returns the stack and a function that stops them."""
    tmp.mkdir(parents=True, exist_ok=True)
    tenants_dir = tmp / "tenants"
    policies_dir = tmp / "policies"
    if not tenants_dir.exists():
        shutil.copytree(tenants or REPO / "tenants", tenants_dir)
    if not policies_dir.exists():
        shutil.copytree(policies or REPO / "policies" / "rego", policies_dir)
    audit_dir = tmp / "audit"
    ingress, authz_port, upstream_port, admin, metrics_port = (processes.free_port() for _ in range(5))
    upstream = make_server("127.0.0.1", upstream_port)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    authz = processes.start_llm_authz(
        ["--listen", f"127.0.0.1:{authz_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
         "--tenants", str(tenants_dir), "--policies", str(policies_dir), "--audit-dir", str(audit_dir),
         *(serve_args or [])], tmp, env=env)
    envoy = None

    def stop_all() -> None:
        processes.stop(envoy)
        processes.stop(authz)
        upstream.shutdown()
        upstream.server_close()

    try:
        processes.wait_for_port(authz_port, proc=authz)
        envoy = processes.start_envoy(
            processes.render_envoy_config(ingress, authz_port, upstream_port, admin, edit=envoy_edit), tmp)
        processes.wait_envoy_ready(admin)
    except Exception:
        stop_all()
        log = (tmp / "llm-authz.log")
        raise RuntimeError("stack did not start:\n" + (log.read_text()[-3000:] if log.exists() else ""))
    stack = Stack(tmp, f"http://127.0.0.1:{ingress}", authz_port, metrics_port, admin, audit_dir,
                  tenants_dir, policies_dir, authz, envoy)
    return stack, stop_all


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack per test module, with the example tenants and the default policy."""
    running, stop_all = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    stop_all()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's) on a free loopback port, no persistence."""
    import subprocess

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    port = processes.free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        processes.wait_for_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """A safety test that did not run must not pass unnoticed among ordinary skips."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "safety" in getattr(r, "keywords", {})]
    if skipped:
        terminalreporter.section("SAFETY TESTS NOT RUN", sep="!", red=True, bold=True)
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.line(f"{report.nodeid}: {reason}")
