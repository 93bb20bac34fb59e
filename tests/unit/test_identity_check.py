"""A whole Check with each credential: what the client reads, and that no secret is kept anywhere."""

from __future__ import annotations

import logging
import shutil
import time

import orjson
import pytest
from prometheus_client import REGISTRY, generate_latest

from llm_authz.check import Checker
from llm_authz.config import Config
from llm_authz.identity.api_keys import new_key as new_api_key
from llm_authz.runtime import load_snapshot
from tests.conftest import ACME_KEY, REPO
from tests.helpers import check_request
from tests.identity_fixtures import ISSUER, claims, hmac_token, new_key, signature_of, write_jwks

ACME_SPIFFE = "spiffe://research.example/ns/ml/sa/batch-eval"
EXPIRED_KEY, EXPIRED_DIGEST = new_api_key()


class Records:
    """An in-memory audit sink (a stand-in for the audit log, which has its own tests)."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def append(self, record: dict) -> None:
        self.records.append(orjson.loads(orjson.dumps(record)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("identity-check")
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    key = new_key("RS256", kid="rsa-1")
    write_jwks(tmp / "tenants" / "keys" / "test.jwks.json", key)
    acme = (tmp / "tenants" / "acme.yaml").read_text().replace(
        "jwks_file: keys/acme.jwks.json, claims: [azp, groups]",
        "jwks_file: keys/test.jwks.json, claims: [azp, groups]").replace("https://idp.acme.example", ISSUER)
    expired_entry = (f'    - {{id: ak_acme_expired, sha256: "{EXPIRED_DIGEST}", scopes: [inference:invoke], '
                     'expires: "2021-06-01T00:00:00Z"}\n')
    acme = acme.replace("  # Tokens from Acme's identity provider.", expired_entry + "  # Tokens from Acme's identity provider.")
    assert "ak_acme_expired" in acme
    (tmp / "tenants" / "acme.yaml").write_text(acme)
    snapshot = load_snapshot(Config(tenants=tmp / "tenants", policies=REPO / "policies" / "rego"))
    sink = Records()
    yield Checker(snapshot, sink), sink, key
    snapshot.revision.close()


def run(checker, headers=None, principal="", model="gpt-4o"):
    req = check_request(headers=headers, principal=principal, source="127.0.0.1",
                        body={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    resp = checker.check(req, deadline=time.monotonic() + 1)
    if resp.HasField("denied_response"):
        d = resp.denied_response
        return d.status.code, {h.header.key: h.header.value for h in d.headers}, d.body
    return 200, {h.header.key: h.header.value for h in resp.ok_response.headers}, ""


def test_a_valid_jwt_is_allowed_and_names_tenant_and_subject(setup):
    checker, sink, key = setup
    status, headers, _ = run(checker, {"authorization": f"Bearer {key.sign(claims(groups=['ml']))}"})
    assert status == 200 and headers["x-llm-authz-tenant"] == "acme" and headers["x-llm-authz-subject"] == "user-123"
    identity = sink.records[-1]["input"]["identity"]
    assert identity["method"] == "jwt" and identity["claims"] == {"groups": ["ml"]} and identity["key_id"] == "rsa-1"


def test_a_rejected_jwt_is_401_invalid_token_with_a_description(setup):
    checker, _, key = setup
    token = key.sign(claims(aud="billing-api"))
    status, headers, body = run(checker, {"authorization": f"Bearer {token}"})
    assert status == 401
    assert headers["www-authenticate"] == ('Bearer realm="llm-authz", error="invalid_token", '
                                           'error_description="the token is not meant for this service (audience)"')
    assert orjson.loads(body)["error"]["code"] == "invalid_credential"
    for part in token.split("."):
        assert part not in body and part not in headers["www-authenticate"]
    assert "billing-api" not in body + headers["www-authenticate"]


def test_a_missing_scope_is_403_insufficient_scope_naming_the_scope(setup):
    checker, _, key = setup
    status, headers, body = run(checker, {"authorization": f"Bearer {key.sign(claims(scope='models:read'))}"})
    assert status == 403 and orjson.loads(body)["error"]["code"] == "insufficient_scope"
    assert headers["www-authenticate"] == 'Bearer realm="llm-authz", error="insufficient_scope", scope="inference:invoke"'


def test_a_tenant_hint_that_disagrees_with_the_token_is_403(setup):
    checker, _, key = setup
    status, _, body = run(checker, {"authorization": f"Bearer {key.sign(claims())}", "x-tenant-id": "research"})
    assert status == 403 and orjson.loads(body)["error"]["code"] == "tenant_mismatch"


def test_an_mtls_principal_is_a_credential(setup):
    checker, sink, _ = setup
    status, headers, _ = run(checker, principal=ACME_SPIFFE, model="llama-3-70b")
    assert status == 200 and headers["x-llm-authz-tenant"] == "research"
    assert sink.records[-1]["input"]["identity"]["method"] == "mtls"


def test_no_token_key_or_signature_reaches_input_decision_audit_logs_or_metrics(setup, caplog):
    checker, sink, key = setup
    caplog.set_level(logging.DEBUG)
    good = key.sign(claims())
    secrets_sent = [good, key.sign(claims(aud="x")), hmac_token(claims(), key.public_pem(), kid="rsa-1"),
                    new_key("RS256", kid="rsa-1").sign(claims()), ACME_KEY, "sk-llm-not-a-real-key-123456"]
    start = len(sink.records)
    for secret in secrets_sent:
        run(checker, {"authorization": f"Bearer {secret}"})
        run(checker, {"x-api-key": secret})
    kept = orjson.dumps(sink.records[start:]).decode() + caplog.text + generate_latest(REGISTRY).decode()
    for secret in secrets_sent:
        assert secret not in kept
        if secret.count(".") == 2:
            assert signature_of(secret) not in kept
    assert "[redacted]" in kept


def test_an_unknown_api_key_and_no_credential_are_401_each_saying_why(setup):
    checker, sink, _ = setup
    status, headers, body = run(checker, {"x-api-key": "sk-llm-not-a-real-key-123456"})
    assert status == 401 and headers["www-authenticate"] == (
        'Bearer realm="llm-authz", error="invalid_token", error_description="the API key is not valid"')
    identity = sink.records[-1]["input"]["identity"]
    assert (identity["method"], identity["error"], identity["error_description"]) == (
        "api_key", "invalid_credential", "the API key is not valid")
    status, headers, body = run(checker, {})
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="llm-authz"'
    assert orjson.loads(body)["error"]["code"] == "missing_credential"
    identity = sink.records[-1]["input"]["identity"]
    assert (identity["method"], identity["error"], identity["error_description"]) == (
        "none", "missing_credential", "no credential was presented")


def test_an_expired_api_key_is_401_saying_it_expired(setup):
    checker, sink, _ = setup
    status, headers, body = run(checker, {"x-api-key": EXPIRED_KEY})
    assert status == 401 and headers["www-authenticate"] == (
        'Bearer realm="llm-authz", error="invalid_token", error_description="the API key has expired"')
    identity = sink.records[-1]["input"]["identity"]
    assert (identity["method"], identity["authenticated"], identity["error"], identity["error_description"]) == (
        "api_key", False, "invalid_credential", "the API key has expired")
    assert EXPIRED_KEY not in orjson.dumps(sink.records[-1]).decode()


def test_an_api_key_expires_at_the_instant_its_expiry_names():
    from datetime import datetime, timedelta, timezone

    from llm_authz.identity.api_keys import ApiKeyIndex
    from llm_authz.identity.model import IdentityError
    from llm_authz.tenants import ApiKey, Credentials, Tenant, TenantFile

    expires = datetime(2030, 1, 1, tzinfo=timezone.utc)
    key, digest = new_api_key()
    entry = ApiKey(id="ak_x", sha256=digest, scopes=["inference:invoke"], expires=expires)
    index = ApiKeyIndex({"x": TenantFile(tenant=Tenant(id="x", tier="free", credentials=Credentials(api_keys=[entry])),
                                         path="/t/x.yaml")})
    assert index.verify(key, expires - timedelta(microseconds=1)).key_id == "ak_x"
    with pytest.raises(IdentityError, match="the API key has expired"):
        index.verify(key, expires)
