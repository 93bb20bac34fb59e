"""JWTs and API keys through a real Envoy: every acceptance and rejection as the client sees it,
key rotation, an IdP outage and a flood of made-up kids against a real JWKS server, revocation
by SIGHUP, and no credential anywhere it must not be.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ACME_KEY, FREE_KEY, REPO, RESEARCH_KEY, start_stack
from tests.identity_fixtures import (AUDIENCE, ISSUER, JwksServer, claims, hmac_token, new_key, signature_of,
                                    unsigned_token, write_jwks)

pytestmark = pytest.mark.integration

FREE_ISSUER = "https://idp.hobbyist.test"
RESEARCH_ISSUER = "https://idp.research.test"
SHARED_ISSUER = "https://sso.shared.test"
SECRET_SENT: list[str] = []  # every token and key sent, to look for afterwards


def add_issuers(path: Path, *entries: dict) -> None:
    doc = yaml.safe_load(path.read_text())
    doc.setdefault("credentials", {})["jwt"] = list(entries)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def allow_client_xfcc(config: dict) -> None:
    """Let a client's own x-forwarded-client-cert reach llm-authz, which must not trust it."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["forward_client_cert_details"] = "ALWAYS_FORWARD_ONLY"


@pytest.fixture(scope="module")
def idp():
    server = JwksServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys():
    return {
        "rs": new_key("RS256", kid="acme-rs"), "es": new_key("ES256", kid="acme-es"),
        "ed": new_key("EdDSA", kid="acme-ed"), "free": new_key("ES256", kid="free-1"),
        "research": new_key("RS256", kid="research-1"), "shared": new_key("ES384", kid="shared-1"),
    }


@pytest.fixture(scope="module")
def jwt_stack(tmp_path_factory, idp, keys):
    tmp = tmp_path_factory.mktemp("jwt")
    tenants = tmp / "tenants"
    shutil.copytree(REPO / "tenants", tenants)
    write_jwks(tenants / "keys" / "acme-test.jwks.json", keys["rs"], keys["es"], keys["ed"])
    write_jwks(tenants / "keys" / "shared.jwks.json", keys["shared"])
    idp.serve("/hobbyist/jwks", keys["free"], max_age=1)
    idp.serve("/research/jwks", keys["research"], max_age=300)
    shared = {"issuer": SHARED_ISSUER, "audiences": [AUDIENCE], "jwks_file": "keys/shared.jwks.json",
              "tenant_claim": "org"}
    add_issuers(tenants / "acme.yaml",
                {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": "keys/acme-test.jwks.json",
                 "claims": ["groups"]}, shared)
    add_issuers(tenants / "hobbyist.yaml",
                {"issuer": FREE_ISSUER, "audiences": [AUDIENCE], "jwks_url": idp.url("/hobbyist/jwks")})
    add_issuers(tenants / "research.yaml",
                {"issuer": RESEARCH_ISSUER, "audiences": [AUDIENCE], "jwks_url": idp.url("/research/jwks"),
                 "scopes_claim": "permissions"}, shared)
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({"jwks": {"min_ttl_seconds": 0.5, "retry_seconds": 0.5,
                                               "unknown_kid_interval_seconds": 60}}))
    running, stop_all = start_stack(tmp, serve_args=["--config", str(config)], envoy_edit=allow_client_xfcc)
    yield running
    stop_all()


def send(stack, token: str | None = None, model: str = "gpt-4o", headers: dict | None = None, **kw) -> httpx.Response:
    if token:
        SECRET_SENT.append(token)
    h = {"authorization": f"Bearer {token}"} if token else {}
    h.update(headers or {})
    return stack.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                      headers=h, **kw)


def denied(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    return err


@pytest.mark.parametrize("which", ["rs", "es", "ed"])
def test_a_valid_token_is_allowed_and_the_upstream_sees_who(jwt_stack, keys, which):
    token = keys[which].sign(claims(sub="dev-42", groups=["ml"]))
    r = send(jwt_stack, token)
    assert r.status_code == 200, r.text
    seen = r.json()["received_headers"]
    assert seen["x-llm-authz-tenant"] == "acme" and seen["x-llm-authz-subject"] == "dev-42"
    assert "authorization" not in seen and token not in r.text


REJECTIONS = {
    "unsigned (alg none)": lambda k: unsigned_token(claims(), kid="acme-rs"),
    "HS256 keyed with the issuer's public key": lambda k: hmac_token(claims(), k["rs"].public_pem(), kid="acme-rs"),
    "unknown kid": lambda k: new_key("ES256", kid="acme-unknown").sign(claims()),
    "signed by another key under a known kid": lambda k: new_key("RS256", kid="acme-rs").sign(claims()),
    "ES256 token naming an RSA kid": lambda k: new_key("ES256", kid="acme-rs").sign(claims()),
    "other issuer": lambda k: k["rs"].sign(claims(iss="https://idp.evil.test")),
    "other audience": lambda k: k["rs"].sign(claims(aud="billing")),
    "expired": lambda k: k["rs"].sign(claims(now=time.time() - 600)),
    "not valid yet": lambda k: k["rs"].sign(claims(nbf=int(time.time()) + 600)),
    "issued in the future": lambda k: k["rs"].sign(claims(now=time.time() + 600)),
    "no expiry": lambda k: k["rs"].sign({**claims(), "exp": None}),
    "truncated": lambda k: k["rs"].sign(claims())[:-20],
    "shared issuer naming a tenant that does not trust it": lambda k: k["shared"].sign(claims(iss=SHARED_ISSUER, org="hobbyist")),
    "shared issuer naming no tenant": lambda k: k["shared"].sign(claims(iss=SHARED_ISSUER)),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_rejected_tokens_are_401_invalid_token_without_echo(jwt_stack, keys, name):
    token = REJECTIONS[name](keys)
    r = send(jwt_stack, token)
    denied(r, 401, "invalid_credential")
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="llm-authz", error="invalid_token", error_description="')
    for part in token.split("."):
        if len(part) > 4:
            assert part not in r.text and part not in challenge
    for value in ("idp.evil.test", "billing", "hobbyist", "acme-unknown", "acme-rs"):
        assert value not in challenge


def test_a_token_without_the_required_scope_is_403_insufficient_scope(jwt_stack, keys):
    r = send(jwt_stack, keys["es"].sign(claims(scope="models:read")))
    denied(r, 403, "insufficient_scope")
    assert r.headers["www-authenticate"] == 'Bearer realm="llm-authz", error="insufficient_scope", scope="inference:invoke"'


def test_scopes_from_the_claim_the_tenant_names(jwt_stack, keys):
    ok = keys["research"].sign(claims(iss=RESEARCH_ISSUER, scope=None, permissions=["inference:invoke"]))
    assert send(jwt_stack, ok, model="llama-3-70b").status_code == 200
    only_scope = keys["research"].sign(claims(iss=RESEARCH_ISSUER, scope="inference:invoke"))
    denied(send(jwt_stack, only_scope, model="llama-3-70b"), 403, "insufficient_scope")


def test_tenants_sharing_an_issuer_get_the_tenant_their_claim_names(jwt_stack, keys):
    acme = send(jwt_stack, keys["shared"].sign(claims(iss=SHARED_ISSUER, org="acme")))
    assert acme.json()["received_headers"]["x-llm-authz-tenant"] == "acme"
    research = send(jwt_stack, keys["shared"].sign(claims(iss=SHARED_ISSUER, org="research")), model="llama-3-70b")
    assert research.json()["received_headers"]["x-llm-authz-tenant"] == "research"


def test_a_tenant_hint_that_disagrees_with_the_token_is_403(jwt_stack, keys):
    token = keys["es"].sign(claims())
    denied(send(jwt_stack, token, headers={"x-tenant-id": "research"}), 403, "tenant_mismatch")
    assert send(jwt_stack, token, headers={"x-tenant-id": "acme"}).status_code == 200


@pytest.mark.parametrize("extra", [
    {"x-api-key": FREE_KEY},     # two credentials, two tenants
    {"x-api-key": ACME_KEY},     # two credentials, two principals of one tenant
])
def test_a_token_with_another_credential_is_401(jwt_stack, keys, extra):
    denied(send(jwt_stack, keys["es"].sign(claims()), headers=extra), 401, "invalid_credential")


def test_duplicate_or_malformed_authorization_is_401(jwt_stack, keys):
    token = keys["es"].sign(claims())
    SECRET_SENT.append(token)
    body = {"model": "gpt-4o", "messages": []}
    dup = jwt_stack.post("/v1/chat/completions", json=body,
                         headers=[("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")])
    denied(dup, 401, "invalid_credential")
    for value in (f"Bearer {token} extra", f"Token {token}", f"Bearer  {token},x", "Bearer"):
        r = jwt_stack.post("/v1/chat/completions", json=body, headers={"authorization": value})
        denied(r, 401, "invalid_credential")


def test_client_identity_headers_are_not_identity_and_never_reach_upstream(jwt_stack, keys):
    spoof = {"x-llm-authz-tenant": "research", "x-llm-authz-subject": "admin", "x-llm-authz-decision-id": "forged",
             "x-llm-authz-scopes": "everything"}
    r = send(jwt_stack, keys["es"].sign(claims()), headers=spoof)
    seen = r.json()["received_headers"]
    assert seen["x-llm-authz-tenant"] == "acme" and seen["x-llm-authz-subject"] == "user-123"
    assert seen["x-llm-authz-decision-id"] != "forged" and "x-llm-authz-scopes" not in seen
    denied(send(jwt_stack, None, headers=spoof), 401, "missing_credential")


def test_a_client_sent_xfcc_header_is_not_trusted_by_default(jwt_stack):
    xfcc = "By=spiffe://edge/envoy;Hash=abc;URI=spiffe://research.example/ns/ml/sa/batch-eval"
    denied(send(jwt_stack, None, model="llama-3-70b", headers={"x-forwarded-client-cert": xfcc}),
           401, "missing_credential")


# ---- a JWKS served over HTTP: rotation, outage, floods ---------------------------------------------

def test_rotation_a_new_kid_is_picked_up_without_restart(jwt_stack, idp, keys):
    ep = idp.endpoints["/hobbyist/jwks"]
    assert send(jwt_stack, keys["free"].sign(claims(iss=FREE_ISSUER)), model="llama-3-8b").status_code == 200
    rotated = new_key("ES256", kid="free-2")
    ep.body = {"keys": [keys["free"].jwk, rotated.jwk]}
    r = send(jwt_stack, rotated.sign(claims(iss=FREE_ISSUER)), model="llama-3-8b")
    assert r.status_code == 200, r.text  # the first request with the new kid already passes
    # The IdP drops the old key: once the background refresh sees it, tokens signed with it stop working.
    ep.body = {"keys": [rotated.jwk]}
    hits = ep.hits
    deadline = time.monotonic() + 10
    while ep.hits < hits + 2:
        assert time.monotonic() < deadline, "no background refresh"
        time.sleep(0.1)
    denied(send(jwt_stack, keys["free"].sign(claims(iss=FREE_ISSUER)), model="llama-3-8b"), 401, "invalid_credential")
    keys["free"] = rotated


def test_an_idp_outage_keeps_the_known_keys_working(jwt_stack, idp, keys):
    ep = idp.endpoints["/hobbyist/jwks"]
    ep.status = 503
    try:
        hits = ep.hits
        deadline = time.monotonic() + 10
        while ep.hits < hits + 2:  # background refreshes are failing
            assert time.monotonic() < deadline, "no background refresh"
            time.sleep(0.1)
        r = send(jwt_stack, keys["free"].sign(claims(iss=FREE_ISSUER)), model="llama-3-8b")
        assert r.status_code == 200, r.text
        metrics = httpx.get(f"http://127.0.0.1:{jwt_stack.metrics_port}/metrics", timeout=5).text
        assert 'llm_authz_jwks_fetches_total{outcome="error",reason="refresh"}' in metrics
    finally:
        ep.status = 200


def test_a_flood_of_made_up_kids_does_not_hammer_the_idp(jwt_stack, idp):
    ep = idp.endpoints["/research/jwks"]
    before = ep.hits
    started = time.monotonic()
    for _ in range(40):
        token = new_key("RS256", kid=uuid.uuid4().hex).sign(claims(iss=RESEARCH_ISSUER)) if _ < 2 else \
            _forge_kid(uuid.uuid4().hex)
        denied(send(jwt_stack, token, model="llama-3-70b"), 401, "invalid_credential")
    assert ep.hits - before <= 1  # one refetch per interval, whatever the number of made-up kids
    assert time.monotonic() - started < 20


_FLOOD_KEY = new_key("RS256", kid="x")


def _forge_kid(kid: str) -> str:
    return _FLOOD_KEY.sign(claims(iss=RESEARCH_ISSUER), headers={"kid": kid})


# ---- revocation by reload, and privacy -------------------------------------------------------------

def test_a_removed_key_stops_working_after_sighup_without_restart(jwt_stack):
    made = subprocess.run([sys.executable, "-m", "llm_authz", "keys", "new", "--tenant", "hobbyist", "--json"],
                          capture_output=True, text=True, check=True, cwd=REPO)
    new = json.loads(made.stdout)
    SECRET_SENT.append(new["key"])
    path = jwt_stack.tenants_dir / "hobbyist.yaml"
    original = path.read_text()
    doc = yaml.safe_load(original)
    doc["credentials"]["api_keys"].append(new["entry"])

    def status_with_key() -> int:
        return jwt_stack.chat(new["key"], model="llama-3-8b").status_code

    def wait_status(expected: int) -> None:
        deadline = time.monotonic() + 15
        while status_with_key() != expected:
            assert time.monotonic() < deadline, f"status never became {expected}"
            time.sleep(0.2)

    pid = jwt_stack.authz.pid
    try:
        assert status_with_key() == 401
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        jwt_stack.authz.send_signal(signal.SIGHUP)
        wait_status(200)
        path.write_text(original)  # the key is revoked: removed from the file
        jwt_stack.authz.send_signal(signal.SIGHUP)
        wait_status(401)
    finally:
        path.write_text(original)
    assert jwt_stack.authz.poll() is None and jwt_stack.authz.pid == pid  # no restart
    assert jwt_stack.chat(FREE_KEY, model="llama-3-8b").status_code == 200
    assert jwt_stack.chat(RESEARCH_KEY, model="llama-3-70b").status_code == 200


def test_no_token_signature_or_key_is_kept_anywhere(jwt_stack):
    assert SECRET_SENT, "run with the tests above"
    texts = [jwt_stack.authz_log(), (jwt_stack.workdir / "envoy.log").read_text(errors="replace"),
             httpx.get(f"http://127.0.0.1:{jwt_stack.metrics_port}/metrics", timeout=5).text]
    for path in jwt_stack.audit_dir.rglob("*"):
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    kept = "\n".join(texts)
    assert "decision_id" in kept  # the audit log was read
    for secret in SECRET_SENT:
        assert secret not in kept
        if secret.count(".") == 2 and len(signature_of(secret)) > 8:
            assert signature_of(secret) not in kept
