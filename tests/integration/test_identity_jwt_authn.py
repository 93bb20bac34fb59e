"""Envoy's jwt_authn filter verifies the token; llm-authz, told to trust it, reads the verified
payload from the CheckRequest metadata instead of verifying the token a second time.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.conftest import ACME_KEY, REPO, start_stack
from tests.identity_fixtures import AUDIENCE, ISSUER, claims, jwks_of, new_key, write_jwks

pytestmark = pytest.mark.integration

ENVOY_KEY = new_key("ES256", kid="envoy-verified")


def add_jwt_authn(config: dict) -> None:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    jwt_authn = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"acme_idp": {
                "issuer": ISSUER,
                "local_jwks": {"inline_string": json.dumps(jwks_of(ENVOY_KEY))},
                "payload_in_metadata": "jwt_payload",
                "forward": False,  # the token itself goes no further than Envoy
            }},
            # A request without a token may still pass with an API key; a bad token is refused by Envoy.
            "rules": [{"match": {"prefix": "/"},
                       "requires": {"requires_any": {"requirements": [{"provider_name": "acme_idp"},
                                                                      {"allow_missing": {}}]}}}],
        },
    }
    ext_authz = next(f for f in filters if f["name"] == "envoy.filters.http.ext_authz")
    ext_authz["typed_config"]["metadata_context_namespaces"] = ["envoy.filters.http.jwt_authn"]
    filters.insert(filters.index(ext_authz), jwt_authn)


@pytest.fixture(scope="module")
def authn_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jwt-authn")
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    # llm-authz's own key file for this issuer holds another key: it could not verify these tokens itself.
    write_jwks(tmp / "tenants" / "keys" / "acme-other.jwks.json", new_key("ES256", kid="not-envoys"))
    acme = tmp / "tenants" / "acme.yaml"
    doc = yaml.safe_load(acme.read_text())
    doc["credentials"]["jwt"] = [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": "keys/acme-other.jwks.json",
                                  "claims": ["groups"]}]
    acme.write_text(yaml.safe_dump(doc, sort_keys=False))
    config = tmp / "config.yaml"
    config.write_text("trust_envoy_jwt_authn: true\n")
    running, stop_all = start_stack(tmp, serve_args=["--config", str(config)], envoy_edit=add_jwt_authn)
    yield running
    stop_all()


def last_record(stack) -> dict:
    from llm_authz.audit import reader

    *_, last = reader.iter_records([stack.audit_dir], skip_partial_tail=True)
    return last


def test_a_token_envoy_verified_is_trusted_without_verifying_it_again(authn_stack):
    r = authn_stack.chat(ENVOY_KEY.sign(claims(sub="dev-7", groups=["ml"], email="dev@acme.test")))
    assert r.status_code == 200, r.text
    seen = r.json()["received_headers"]
    assert seen["x-llm-authz-tenant"] == "acme" and seen["x-llm-authz-subject"] == "dev-7"
    doc = last_record(authn_stack)["input"]
    assert doc["identity"]["method"] == "jwt" and doc["identity"]["claims"] == {"groups": ["ml"]}
    # Claims outside the issuer's allow-list do not reach the policy through Envoy's metadata either.
    assert "dev@acme.test" not in json.dumps(doc)


def test_a_token_envoy_rejects_never_reaches_llm_authz(authn_stack):
    r = authn_stack.chat(new_key("ES256", kid="envoy-verified").sign(claims()))
    assert r.status_code == 401 and "x-llm-authz-decision-id" not in r.headers


@pytest.mark.parametrize("bad, description", [
    ({"aud": "billing"}, "audience"),
    ({"sub": None}, "no subject"),
])
def test_the_service_still_checks_what_envoy_was_not_told(authn_stack, bad, description):
    # Envoy's provider names no audiences and needs no subject; the service's checks still apply.
    # (The token is made now, not when the tests are collected: it lives five minutes.)
    r = authn_stack.chat(ENVOY_KEY.sign(claims(**bad)))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credential"
    assert description in r.headers["www-authenticate"]


def test_scopes_of_the_verified_token_apply(authn_stack):
    r = authn_stack.chat(ENVOY_KEY.sign(claims(scope="models:read")))
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"


def test_without_a_token_an_api_key_still_works(authn_stack):
    # (In Authorization, jwt_authn would take the key for a malformed JWT and refuse it.)
    assert authn_stack.chat(None, headers={"x-api-key": ACME_KEY}).status_code == 200


def test_a_verified_token_and_an_api_key_together_are_401(authn_stack):
    r = authn_stack.chat(ENVOY_KEY.sign(claims()), headers={"x-api-key": ACME_KEY})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credential"


def test_the_jwt_authn_metadata_is_redacted_from_the_input(authn_stack):
    authn_stack.chat(ENVOY_KEY.sign(claims(email="dev@acme.test")))
    attributes = last_record(authn_stack)["input"]["attributes"]
    assert attributes["metadataContext"]["filterMetadata"]["envoy.filters.http.jwt_authn"] == "[redacted]"
