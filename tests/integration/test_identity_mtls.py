"""mTLS through a real Envoy TLS listener that requires client certificates made in the test:
the SPIFFE ID in the certificate maps to a tenant, and nothing a client writes can stand in for it.
"""

from __future__ import annotations

import copy
import shutil
import ssl

import httpx
import pytest
import yaml

from llm_authz.demo import processes
from tests.conftest import ACME_KEY, REPO, RESEARCH_KEY, start_stack
from tests.identity_fixtures import Pki

pytestmark = pytest.mark.integration

RESEARCH_SPIFFE = "spiffe://research.example/ns/ml/sa/batch-eval"  # in tenants/research.yaml
ACME_SPIFFE = "spiffe://acme.example/ns/prod/sa/chatbot"
BODY = {"messages": [{"role": "user", "content": "hi"}]}


def add_mtls_listener(port: int, pki: Pki, cert, key):
    def edit(config: dict) -> None:
        tls = copy.deepcopy(config["static_resources"]["listeners"][0])
        tls["name"] = "ingress_mtls"
        tls["address"]["socket_address"]["port_value"] = port
        chain = tls["filter_chains"][0]
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": str(cert)},
                                          "private_key": {"filename": str(key)}}],
                    "validation_context": {"trusted_ca": {"filename": str(pki.ca_path)}},
                },
            },
        }
        hcm = chain["filters"][0]["typed_config"]
        hcm["stat_prefix"] = "ingress_mtls"
        # Envoy replaces any client-sent XFCC with the verified certificate's details.
        hcm["forward_client_cert_details"] = "SANITIZE_SET"
        hcm["set_current_client_cert_details"] = {"uri": True}
        config["static_resources"]["listeners"].append(tls)
    return edit


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtls")
    pki = Pki(tmp / "pki")
    server_cert, server_key = pki.issue("envoy", dns="localhost", ip="127.0.0.1", server=True)
    certs = {
        "research": pki.issue("research-batch", uri=RESEARCH_SPIFFE),
        "acme": pki.issue("acme-chatbot", uri=ACME_SPIFFE),
        "unregistered": pki.issue("stranger", uri="spiffe://research.example/ns/ml/sa/other"),
        "no-uri": pki.issue("dns-only", dns="batch.research.example"),
    }
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    acme = tmp / "tenants" / "acme.yaml"
    doc = yaml.safe_load(acme.read_text())
    doc["credentials"]["mtls"] = [{"spiffe_id": ACME_SPIFFE, "scopes": ["inference:invoke"]}]
    acme.write_text(yaml.safe_dump(doc, sort_keys=False))
    config = tmp / "config.yaml"
    config.write_text("trust_xfcc: true\n")
    port = processes.free_port()
    running, stop_all = start_stack(tmp, serve_args=["--config", str(config)],
                                    envoy_edit=add_mtls_listener(port, pki, server_cert, server_key))
    running.extra.update(tls_url=f"https://127.0.0.1:{port}", pki=pki, certs=certs)
    yield running
    stop_all()


def over_mtls(stack, who: str | None, model: str, headers: dict | None = None) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(stack.extra["pki"].ca_path))
    if who is not None:
        cert, key = stack.extra["certs"][who]
        ctx.load_cert_chain(str(cert), str(key))
    return httpx.post(stack.extra["tls_url"] + "/v1/chat/completions", json={"model": model, **BODY},
                      headers=headers or {}, verify=ctx, timeout=10)


def test_the_certificate_spiffe_id_maps_to_its_tenant(mtls):
    r = over_mtls(mtls, "research", "llama-3-70b")
    assert r.status_code == 200, r.text
    seen = r.json()["received_headers"]
    assert seen["x-llm-authz-tenant"] == "research" and seen["x-llm-authz-subject"] == RESEARCH_SPIFFE
    acme = over_mtls(mtls, "acme", "gpt-4o")
    assert acme.status_code == 200 and acme.json()["received_headers"]["x-llm-authz-tenant"] == "acme"


def test_the_tenant_is_least_privilege_for_the_certificate_too(mtls):
    r = over_mtls(mtls, "research", "gpt-4o")
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"


@pytest.mark.parametrize("who", ["unregistered", "no-uri"])
def test_a_certificate_no_tenant_names_is_401(mtls, who):
    r = over_mtls(mtls, who, "llama-3-70b")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credential"
    assert "spiffe://" not in r.headers["www-authenticate"]


def test_without_a_client_certificate_the_tls_handshake_fails(mtls):
    with pytest.raises(httpx.HTTPError):
        over_mtls(mtls, None, "llama-3-70b")


def test_a_client_sent_xfcc_is_replaced_by_envoy(mtls):
    forged = f"By=spiffe://edge/envoy;Hash=abc;URI={ACME_SPIFFE}"
    r = over_mtls(mtls, "research", "llama-3-70b", headers={"x-forwarded-client-cert": forged})
    assert r.status_code == 200 and r.json()["received_headers"]["x-llm-authz-tenant"] == "research"
    r = over_mtls(mtls, "unregistered", "gpt-4o", headers={"x-forwarded-client-cert": forged})
    assert r.status_code == 401


def test_a_client_sent_xfcc_on_a_plain_listener_is_no_credential(mtls):
    # trust_xfcc is on, but Envoy (default SANITIZE) drops a client's XFCC on the plain listener.
    r = mtls.post("/v1/chat/completions", json={"model": "llama-3-70b", **BODY},
                  headers={"x-forwarded-client-cert": f"URI={RESEARCH_SPIFFE}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_credential"


def test_a_certificate_and_an_api_key_must_name_the_same_tenant(mtls):
    same = over_mtls(mtls, "research", "llama-3-70b", headers={"x-api-key": RESEARCH_KEY})
    assert same.status_code == 200 and same.json()["received_headers"]["x-llm-authz-subject"] == "ak_research_1"
    other = over_mtls(mtls, "research", "gpt-4o", headers={"authorization": f"Bearer {ACME_KEY}"})
    assert other.status_code == 401 and other.json()["error"]["code"] == "invalid_credential"
    assert "different tenants" in other.headers["www-authenticate"]


def test_a_tenant_hint_that_disagrees_with_the_certificate_is_403(mtls):
    r = over_mtls(mtls, "research", "llama-3-70b", headers={"x-tenant-id": "acme"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_mismatch"
