"""The `opa` engine (an OPA server over REST) decides through a real Envoy, writes nothing to an OPA
that manages its own bundle, pushes only with --opa-push, and denies when the server is down.

The OPA server here is tests/opa_stand_in.py, a STAND-IN built on the embedded engine (no OPA
binary is installable here).
"""

from __future__ import annotations

import pytest

from llm_authz.bundle import read_bundle
from llm_authz.bundle.build import build
from tests.conftest import ACME_KEY, FREE_KEY, REPO, start_stack
from tests.opa_stand_in import OpaStandIn

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sidecar_stack(tmp_path_factory):
    """An OPA sidecar that loaded the bundle llm-authz also loads (as both would from a bundle server)."""
    tmp = tmp_path_factory.mktemp("opa")
    bundle_path = tmp / "llm.tar.gz"
    build([REPO / "policies" / "rego"], bundle_path, revision="r1", tenants_dir=REPO / "tenants")
    bundle = read_bundle(bundle_path)
    opa = OpaStandIn(bundle.modules, bundle.data)
    running, stop_all = start_stack(tmp / "stack", ["--engine", "opa", "--opa-url", opa.url,
                                                     "--bundle", str(bundle_path)])
    running.extra["opa"] = opa
    yield running
    stop_all()
    opa.close()


def test_decisions_come_from_the_opa_server_and_nothing_is_written(sidecar_stack):
    opa = sidecar_stack.extra["opa"]
    before = opa.requests
    assert sidecar_stack.chat(ACME_KEY).status_code == 200
    r = sidecar_stack.chat(FREE_KEY, model="gpt-4o")
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert opa.requests == before + 2
    assert opa.writes == []  # no PUT /v1/policies, no PUT /v1/data: the bundle's content stays


def test_connections_to_the_opa_server_are_reused(sidecar_stack):
    opa = sidecar_stack.extra["opa"]
    for _ in range(20):
        assert sidecar_stack.chat(ACME_KEY).status_code == 200
    assert opa.connections <= 3 < opa.requests


def test_opa_server_down_denies_with_500(sidecar_stack):
    sidecar_stack.extra["opa"].close()
    r = sidecar_stack.chat(ACME_KEY)
    assert r.status_code == 500 and r.json()["error"]["code"] == "policy_error"


def test_opa_push_writes_to_a_private_opa(tmp_path):
    opa = OpaStandIn()
    running, stop_all = start_stack(tmp_path / "stack", ["--engine", "opa", "--opa-url", opa.url, "--opa-push"])
    try:
        assert running.chat(ACME_KEY).status_code == 200
        assert "PUT /v1/data" in opa.writes and any(w.startswith("PUT /v1/policies/") for w in opa.writes)
    finally:
        stop_all()
        opa.close()


def test_opa_push_to_a_bundle_managed_opa_is_refused_at_start(tmp_path):
    from llm_authz.demo import processes

    opa = OpaStandIn({"p.rego": "package p\n"}, {})
    try:
        proc = processes.start_llm_authz(["--engine", "opa", "--opa-url", opa.url, "--opa-push",
                                          "--listen", f"127.0.0.1:{processes.free_port()}",
                                          "--metrics-listen", f"127.0.0.1:{processes.free_port()}",
                                          "--policies", str(REPO / "policies" / "rego"),
                                          "--tenants", str(REPO / "tenants"), "--audit-dir", str(tmp_path / "a")],
                                         tmp_path)
        assert proc.wait(30) == 1
        assert "owned by bundle" in (tmp_path / "llm-authz.log").read_text()
    finally:
        opa.close()
