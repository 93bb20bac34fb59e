"""The service as operators run it: health, reflection, metrics, network rules, policy errors, shutdown."""

from __future__ import annotations

import signal
import textwrap

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import ACME_KEY, FREE_KEY, start_stack

pytestmark = pytest.mark.integration


def test_grpc_health_reports_serving(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.authz_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.auth.v3.Authorization"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_reflection_lists_the_authorization_service(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.authz_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"envoy.service.auth.v3.Authorization", "grpc.health.v1.Health"} <= names


def test_metrics_count_checks_by_result_status_and_tenant(stack):
    stack.chat(ACME_KEY)
    stack.chat(None)
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text
    assert 'llm_authz_checks_total{result="allow",status="200",tenant="acme"}' in text
    assert 'llm_authz_checks_total{result="deny",status="401",tenant="none"}' in text
    assert "llm_authz_decision_seconds_bucket" in text
    assert ACME_KEY not in text


@pytest.fixture(scope="module")
def custom_stack(tmp_path_factory):
    """A tenant that only accepts 10.0.0.0/8, and a policy module that errors on one model."""
    tmp = tmp_path_factory.mktemp("custom")
    from tests.conftest import REPO
    import shutil

    shutil.copytree(REPO / "tenants", tmp / "tenants")
    text = (tmp / "tenants" / "hobbyist.yaml").read_text()
    (tmp / "tenants" / "hobbyist.yaml").write_text(text.replace('["0.0.0.0/0", "::/0"]', '["10.0.0.0/8"]'))
    shutil.copytree(REPO / "policies" / "rego", tmp / "policies")
    (tmp / "policies" / "llm" / "authz.rego").write_text(
        (tmp / "policies" / "llm" / "authz.rego").read_text() + textwrap.dedent('''
            # Test-only: a builtin error for one model, to see a policy error deny.
            reasons contains "boom" if {
            	input.model.name == "explode"
            	1 / 0
            }
        '''))
    running, stop_all = start_stack(tmp)
    yield running
    stop_all()


def test_source_outside_the_tenants_networks_is_403(custom_stack):
    r = custom_stack.chat(FREE_KEY, model="llama-3-8b")
    assert r.status_code == 403 and r.json()["error"]["code"] == "network_not_allowed"


def test_a_client_x_forwarded_for_does_not_change_the_source(custom_stack):
    r = custom_stack.chat(FREE_KEY, model="llama-3-8b", headers={"x-forwarded-for": "10.1.2.3"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "network_not_allowed"


def test_a_policy_error_denies_with_500(custom_stack):
    r = custom_stack.chat(ACME_KEY, model="explode")
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "policy_error" and "divide" not in err["message"]
    assert custom_stack.chat(ACME_KEY).status_code == 200


def test_sigterm_stops_cleanly(tmp_path):
    running, stop_all = start_stack(tmp_path)
    try:
        assert running.chat(ACME_KEY).status_code == 200
        running.authz.send_signal(signal.SIGTERM)
        assert running.authz.wait(20) == 0
        assert "llm-authz stopped" in running.authz_log()
        # With llm-authz gone, Envoy denies (failure_mode_allow is false).
        assert running.chat(ACME_KEY).status_code in (403, 500, 503)
    finally:
        stop_all()


def test_start_fails_with_a_clear_error_on_a_bad_tenant_file(tmp_path):
    from tests.conftest import REPO
    import shutil
    import subprocess
    import sys

    shutil.copytree(REPO / "tenants", tmp_path / "tenants")
    (tmp_path / "tenants" / "broken.yaml").write_text("id: broken\ntier: free\nmodels:\n  m: {operations: [fly]}\n")
    proc = subprocess.run([sys.executable, "-m", "llm_authz", "serve", "--tenants", str(tmp_path / "tenants"),
                           "--listen", "127.0.0.1:0", "--audit-dir", str(tmp_path / "audit")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "broken.yaml:4" in proc.stderr and "models.m.operations" in proc.stderr
