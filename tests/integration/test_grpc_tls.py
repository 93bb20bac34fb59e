"""TLS and mTLS on the gRPC port, through a real Envoy whose llm_authz cluster speaks TLS with
an UpstreamTlsContext; certificates swapped in a Secret-shaped volume are used without a restart."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_authz.demo import processes
from tests.conftest import ACME_KEY, REPO, Stack, start_stack
from tests.identity_fixtures import Pki
from tests.kubelet_volume import KubeletVolume

pytestmark = pytest.mark.integration

SERVER_NAME = "llm-authz.llm-authz.svc"
WAIT_SECONDS = 20.0


def upstream_tls(ca: Path, client: tuple[Path, Path] | None) -> dict[str, Any]:
    """Envoy's transport socket for the llm_authz cluster: verify the server, present a client cert."""
    context: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": str(ca)},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": SERVER_NAME}}],
        },
    }
    if client is not None:
        context["tls_certificates"] = [{"certificate_chain": {"filename": str(client[0])},
                                        "private_key": {"filename": str(client[1])}}]
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": SERVER_NAME, "common_tls_context": context}}


def with_tls(ca: Path, client: tuple[Path, Path] | None) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] == "llm_authz":
                cluster["transport_socket"] = upstream_tls(ca, client)
    return edit


class ExtraEnvoy:
    """Another Envoy in front of the same llm-authz and upstream, with its own llm_authz TLS settings."""

    def __init__(self, stack: Stack, workdir: Path, edit: Callable[[dict], None]):
        workdir.mkdir(parents=True, exist_ok=True)
        self.ingress, admin = processes.free_port(), processes.free_port()
        upstream = stack.extra["upstream_port"]
        self.proc = processes.start_envoy(
            processes.render_envoy_config(self.ingress, stack.authz_port, upstream, admin, edit=edit), workdir)
        processes.wait_envoy_ready(admin)

    def chat(self) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.ingress}/v1/chat/completions", timeout=10,
                          headers={"authorization": f"Bearer {ACME_KEY}"},
                          json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]})

    def stop(self) -> None:
        processes.stop(self.proc)


def secret_files(pki: Pki, name: str, client_ca: Path) -> dict[str, bytes]:
    """What cert-manager puts in a certificate's Secret: tls.crt, tls.key, ca.crt."""
    cert, key = pki.issue(name, dns=SERVER_NAME, server=True)
    return {"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes(), "ca.crt": client_ca.read_bytes()}


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tls")
    server_ca, next_ca, client_ca, rogue_ca = (Pki(tmp / n) for n in ("server-ca", "next-ca", "client-ca", "rogue"))
    envoy_cert = client_ca.issue("envoy")
    secret = KubeletVolume(tmp / "secret", secret_files(server_ca, "llm-authz", client_ca.ca_path))
    upstream_port = None

    def edit(config: dict) -> None:
        nonlocal upstream_port
        with_tls(server_ca.ca_path, envoy_cert)(config)
        upstream_port = next(c for c in config["static_resources"]["clusters"] if c["name"] == "model_upstream")[
            "load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]

    health_port = processes.free_port()
    stack, stop_all = start_stack(tmp / "stack", envoy_edit=edit, serve_args=[
        "--health-listen", f"127.0.0.1:{health_port}", "--tls-cert", str(secret.root / "tls.crt"), "--tls-key", str(secret.root / "tls.key"),
        "--tls-client-ca", str(secret.root / "ca.crt")])
    stack.extra["upstream_port"] = upstream_port
    stack.extra["health_port"] = health_port
    yield {"stack": stack, "tmp": tmp, "secret": secret, "server_ca": server_ca, "next_ca": next_ca,
           "client_ca": client_ca, "rogue_ca": rogue_ca, "envoy_cert": envoy_cert}
    stop_all()


def test_envoy_with_a_client_certificate_is_answered_over_mtls(mtls: dict[str, Any]) -> None:
    response = mtls["stack"].chat(ACME_KEY)
    assert response.status_code == 200, response.text
    assert "llm-authz serving on" in mtls["stack"].authz_log() and "with TLS" in mtls["stack"].authz_log()


@pytest.mark.parametrize("who", ["no client certificate", "a certificate from another CA"])
def test_envoy_without_a_trusted_client_certificate_is_refused(mtls: dict[str, Any], who: str) -> None:
    client = None if who == "no client certificate" else mtls["rogue_ca"].issue("intruder")
    envoy = ExtraEnvoy(mtls["stack"], mtls["tmp"] / who.replace(" ", "-"), with_tls(mtls["server_ca"].ca_path, client))
    try:
        response = envoy.chat()
        assert response.status_code == 500  # ext_authz could not be reached: status_on_error, never the upstream
        assert "gpt-4o" not in response.text
    finally:
        envoy.stop()


def plaintext_health(port: int) -> str:
    """What a plaintext gRPC health check (a Kubernetes gRPC probe) gets from the port."""
    probe = subprocess.run(
        [sys.executable, "-c", "import grpc, sys; from grpc_health.v1 import health_pb2, health_pb2_grpc\n"
         f"ch = grpc.insecure_channel('127.0.0.1:{port}')\n"
         "try:\n  print(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3).status)\n"
         "except grpc.RpcError as e: print(e.code())"], capture_output=True, text=True, cwd=REPO, timeout=60)
    return probe.stdout.strip()


def test_a_plaintext_client_is_refused_and_probes_use_the_health_port(mtls: dict[str, Any]) -> None:
    assert plaintext_health(mtls["stack"].authz_port) == "StatusCode.UNAVAILABLE"
    assert plaintext_health(mtls["stack"].extra["health_port"]) == "1"  # SERVING


def test_a_rotated_certificate_is_served_from_the_next_handshake(mtls: dict[str, Any]) -> None:
    """An Envoy that trusts only the next CA is refused until the Secret's files are swapped."""
    stack = mtls["stack"]
    envoy = ExtraEnvoy(stack, mtls["tmp"] / "next", with_tls(mtls["next_ca"].ca_path, mtls["envoy_cert"]))
    try:
        assert envoy.chat().status_code == 500
        mtls["secret"].update(secret_files(mtls["next_ca"], "llm-authz-rotated", mtls["client_ca"].ca_path))
        deadline = time.monotonic() + WAIT_SECONDS
        while envoy.chat().status_code != 200:
            assert time.monotonic() < deadline, "the rotated certificate was not served"
            time.sleep(0.2)
        metrics = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text
        assert 'llm_authz_tls_reloads_total{outcome="ok"} 1.0' in metrics
    finally:
        envoy.stop()
