"""JWT verification: every accepted algorithm, every rejection, tenants, scopes and claims."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone

import orjson
import pytest

from llm_authz.config import Config
from llm_authz.facts.request import from_check_request
from llm_authz.identity.api_keys import ApiKeyIndex
from llm_authz.identity.jwks import SUPPORTED_ALGORITHMS, KeySet, StaticKeySource, parse_jwks
from llm_authz.identity.jwt import IssuerBinding, JwtVerifier, scopes_of
from llm_authz.identity.model import IdentityError
from llm_authz.identity.resolve import IdentityResolver
from llm_authz.tenants import JwtIssuer
from tests.helpers import check_request
from tests.identity_fixtures import (AUDIENCE, ISSUER, b64url, claims, hmac_token, jwks_of, new_key,
                                    signature_of, unsigned_token)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


@pytest.fixture(scope="module")
def keys():
    made = {alg: new_key(alg, kid=f"kid-{alg.lower()}") for alg in ("RS256", "PS256", "ES256", "ES384", "EdDSA")}
    for alg in ("RS384", "RS512"):
        made[alg] = type(made["RS256"])(made["RS256"].private, made["RS256"].kid, alg)
    return made


def key_set(*keys) -> KeySet:
    return parse_jwks(orjson.dumps(jwks_of(*keys)))[0]


def binding(keyset: KeySet, tenant: str = "acme", **entry) -> IssuerBinding:
    fields = {"issuer": ISSUER, "audiences": [AUDIENCE, "other-api"], "jwks_file": "keys.json", **entry}
    issuer = JwtIssuer(**fields)
    return IssuerBinding(tenant, issuer, StaticKeySource(keyset), frozenset(issuer.algorithms or SUPPORTED_ALGORITHMS))


@pytest.fixture(scope="module")
def verifier(keys):
    ks = key_set(*{k.kid: k for k in keys.values()}.values())
    return JwtVerifier([binding(ks, claims=["email", "groups"])], leeway_seconds=30)


def verify(verifier: JwtVerifier, token: str, now: float | None = None):
    when = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc)
    return verifier.verify(token, when, time.monotonic() + 0.2)


def rejection(verifier: JwtVerifier, token: str, now: float | None = None) -> str:
    with pytest.raises(IdentityError) as info:
        verify(verifier, token, now)
    assert info.value.method == "jwt"
    return info.value.description


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_each_asymmetric_algorithm_verifies(verifier, keys, alg):
    token = keys[alg].sign(claims(email="dev@acme.test", secret_claim="s3cr3t"))
    identity = verify(verifier, token)
    assert identity.authenticated and identity.method == "jwt"
    assert (identity.tenant, identity.subject, identity.issuer) == ("acme", "user-123", ISSUER)
    assert identity.key_id == keys[alg].kid
    assert identity.scopes == ["inference:invoke"]
    assert identity.claims == {"email": "dev@acme.test"}  # only the allow-listed claims


def _tampered(token: str) -> str:
    head, payload, sig = token.split(".")
    body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["sub"] = "admin"
    return f"{head}.{b64url(orjson.dumps(body))}.{sig}"


REJECTIONS = {
    "alg none": (lambda k: unsigned_token(claims(), kid=k["RS256"].kid), "unsigned"),
    "alg none, no kid": (lambda k: unsigned_token(claims(), kid=None), "unsigned"),
    "alg NONE": (lambda k: unsigned_token(claims(), alg="NONE"), "unsigned"),
    "alg nOnE with a signature": (lambda k: unsigned_token(claims(), alg="nOnE") + "c2ln", "unsigned"),
    "HS256 with the issuer's public key as secret": (
        lambda k: hmac_token(claims(), k["RS256"].public_pem(), kid=k["RS256"].kid), "HMAC"),
    "HS512 with the issuer's JWK as secret": (
        lambda k: hmac_token(claims(), orjson.dumps(k["ES256"].jwk), kid=k["ES256"].kid, alg="HS512"), "HMAC"),
    "unknown kid": (lambda k: new_key("RS256", kid="made-up").sign(claims()), "signing key is not known"),
    "another key with a known kid": (lambda k: new_key("ES256", kid=k["ES256"].kid).sign(claims()), "signature is not valid"),
    "EC token naming an RSA kid": (lambda k: new_key("ES256", kid=k["RS256"].kid).sign(claims()), "does not match its key"),
    "tampered payload": (lambda k: _tampered(k["RS256"].sign(claims())), "signature is not valid"),
    "signature cut off": (lambda k: k["RS256"].sign(claims()).rsplit(".", 1)[0] + ".", "signature is not valid"),
    "not a JWT": (lambda k: "a.b.c", "malformed"),
    "payload not an object": (lambda k: b64url(b'{"alg":"RS256"}') + "." + b64url(b"[1]") + ".AAAA", "malformed"),
    "kid not a string": (lambda k: b64url(b'{"alg":"RS256","kid":7}') + "." + b64url(orjson.dumps(claims())) + ".AAAA",
                         "malformed"),
    "alg not a string": (lambda k: b64url(b'{"alg":["RS256"]}') + "." + b64url(orjson.dumps(claims())) + ".AAAA",
                         "malformed"),
    "alg unknown": (lambda k: b64url(b'{"alg":"ES256K"}') + "." + b64url(orjson.dumps(claims())) + ".AAAA",
                    "not supported"),
    "other issuer": (lambda k: k["RS256"].sign(claims(iss="https://evil.test")), "issuer is not trusted"),
    "issuer with trailing slash": (lambda k: k["RS256"].sign(claims(iss=ISSUER + "/")), "issuer is not trusted"),
    "no issuer": (lambda k: k["RS256"].sign(claims(iss=None)), "names no issuer"),
    "other audience": (lambda k: k["RS256"].sign(claims(aud="billing-api")), "audience"),
    "no audience": (lambda k: k["RS256"].sign(claims(aud=None)), "no audience"),
    "audience not strings": (lambda k: k["RS256"].sign(claims(aud=[1, 2])), "audience is malformed"),
    "expired": (lambda k: k["RS256"].sign(claims(now=time.time() - 400)), "expired"),
    "no expiry": (lambda k: k["RS256"].sign({**claims(), "exp": None}), "no expiry"),
    "expiry not a number": (lambda k: k["RS256"].sign({**claims(), "exp": "tomorrow"}), "not a number"),
    "expiry a boolean": (lambda k: k["RS256"].sign({**claims(), "exp": True}), "not a number"),
    "not valid yet": (lambda k: k["RS256"].sign(claims(nbf=int(time.time()) + 120)), "not valid yet"),
    "issued in the future": (lambda k: k["RS256"].sign(claims(now=time.time() + 120)), "issued in the future"),
    "no subject": (lambda k: k["RS256"].sign(claims(sub=None)), "no subject"),
    "scope not a string": (lambda k: k["RS256"].sign(claims(scope=None, scp=[1])), "'scp' claim"),
    "too large": (lambda k: k["RS256"].sign(claims(pad="x" * 20000)), "too large"),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_rejections_say_why_without_echoing_anything(verifier, keys, name):
    make, expected = REJECTIONS[name]
    token = make(keys)
    description = rejection(verifier, token)
    if expected:
        assert expected in description
    for part in [token, *token.split("."), "user-123", ISSUER, "https://evil.test", "billing-api",
                 "made-up", *(k.kid for k in keys.values())]:
        if part and len(part) > 3:
            assert part not in description


def test_leeway_accepts_small_clock_skew(verifier, keys):
    now = time.time()
    verify(verifier, keys["ES256"].sign(claims(now=now - 310)), now)  # expired 10 s ago, leeway 30 s
    verify(verifier, keys["ES256"].sign(claims(now=now + 20)), now)  # issued 20 s in the future
    assert "expired" in rejection(verifier, keys["ES256"].sign(claims(now=now - 340)), now)


def test_algorithms_named_by_the_issuer_are_the_only_ones_accepted(keys):
    v = JwtVerifier([binding(key_set(keys["RS256"], keys["ES256"]), algorithms=["ES256"])])
    verify(v, keys["ES256"].sign(claims()))
    assert "not accepted for its issuer" in rejection(v, keys["RS256"].sign(claims()))


def test_a_key_declaring_its_alg_verifies_only_that_alg(keys):
    jwk = {**keys["RS256"].jwk, "alg": "PS256"}
    v = JwtVerifier([binding(parse_jwks(orjson.dumps({"keys": [jwk]}))[0])])
    ps = type(keys["RS256"])(keys["RS256"].private, keys["RS256"].kid, "PS256")
    verify(v, ps.sign(claims()))
    assert "does not match its key" in rejection(v, keys["RS256"].sign(claims()))


def test_a_token_without_kid_uses_the_only_key_that_fits(keys):
    only = new_key("ES256", kid=None)
    v = JwtVerifier([binding(key_set(only, keys["RS256"]))])
    assert verify(v, only.sign(claims())).key_id is None
    two = JwtVerifier([binding(key_set(new_key("ES256", kid="a"), new_key("ES256", kid="b")))])
    assert "names no key id" in rejection(two, new_key("ES256", kid=None).sign(claims()))


@pytest.mark.parametrize("payload, claim, expected", [
    ({"scope": "a b  c"}, None, ["a", "b", "c"]),
    ({"scp": ["a", "b"]}, None, ["a", "b"]),
    ({"scp": "a b"}, None, ["a", "b"]),
    ({"scope": "a", "scp": ["b"]}, None, ["a"]),
    ({"permissions": ["inference:invoke", "x"]}, "permissions", ["inference:invoke", "x"]),
    ({"scope": "a"}, "permissions", []),
    ({}, None, []),
    ({"scope": "a a b"}, None, ["a", "b"]),
])
def test_scopes(payload, claim, expected):
    assert scopes_of(payload, claim) == expected


@pytest.mark.parametrize("value", [7, {"a": 1}, ["a", 2], None])
def test_malformed_scopes_are_rejected(value):
    with pytest.raises(IdentityError):
        scopes_of({"scope": value}, None)


def test_tenants_sharing_an_issuer_are_told_apart_by_tenant_claim(keys):
    ks = key_set(keys["ES256"])
    v = JwtVerifier([binding(ks, "acme", tenant_claim="org"), binding(ks, "hobbyist", tenant_claim="tenant")])
    assert verify(v, keys["ES256"].sign(claims(org="acme"))).tenant == "acme"
    assert verify(v, keys["ES256"].sign(claims(tenant="hobbyist"))).tenant == "hobbyist"
    for bad in ({"org": "research"}, {}, {"org": "hobbyist"}, {"org": ["acme"]}, {"org": "acme", "tenant": "hobbyist"}):
        assert "tenant" in rejection(v, keys["ES256"].sign(claims(**bad)))


def test_a_single_tenant_with_tenant_claim_requires_it(keys):
    v = JwtVerifier([binding(key_set(keys["ES256"]), "acme", tenant_claim="org")])
    assert verify(v, keys["ES256"].sign(claims(org="acme"))).tenant == "acme"
    assert "tenant" in rejection(v, keys["ES256"].sign(claims(org="hobbyist")))
    assert "tenant" in rejection(v, keys["ES256"].sign(claims()))


def test_each_tenant_checks_its_own_audiences(keys):
    ks = key_set(keys["ES256"])
    v = JwtVerifier([binding(ks, "acme", tenant_claim="org", audiences=["acme-api"]),
                     binding(ks, "hobbyist", tenant_claim="org", audiences=["free-api"])])
    assert verify(v, keys["ES256"].sign(claims(org="acme", aud="acme-api"))).tenant == "acme"
    assert "audience" in rejection(v, keys["ES256"].sign(claims(org="hobbyist", aud="acme-api")))


# ---- through the resolver: bearer tokens, API keys, Envoy's jwt_authn payload --------------------

def resolver_for(verifier: JwtVerifier, **kw) -> IdentityResolver:
    return IdentityResolver(ApiKeyIndex({}), verifier, **kw)


def facts_with(headers=None, jwt_authn=None):
    req = check_request(headers=headers, body={"model": "gpt-4o", "messages": []})
    if jwt_authn is not None:
        req.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(jwt_authn)
    return from_check_request(req)


def test_resolver_verifies_a_bearer_jwt(verifier, keys):
    identity = resolver_for(verifier).resolve(facts_with({"authorization": f"Bearer {keys['PS256'].sign(claims())}"}))
    assert identity.authenticated and identity.tenant == "acme"


def test_resolver_rejects_jwt_and_api_key_together(verifier, keys):
    token = keys["RS256"].sign(claims())
    identity = resolver_for(verifier).resolve(facts_with({"authorization": f"Bearer {token}", "x-api-key": "sk-llm-x"}))
    assert identity.error == "invalid_credential" and "two different credentials" in identity.error_description


def test_envoy_jwt_authn_payload_is_trusted_only_when_configured(verifier):
    payload = claims(email="dev@acme.test")
    trusting = resolver_for(verifier, trust_envoy_jwt_authn=True)
    identity = trusting.resolve(facts_with(jwt_authn={"jwt_payload": payload}))
    assert identity.authenticated and identity.tenant == "acme" and identity.claims == {"email": "dev@acme.test"}
    assert resolver_for(verifier).resolve(facts_with(jwt_authn={"jwt_payload": payload})).error == "missing_credential"


def test_envoy_jwt_authn_payload_still_passes_every_claim_check(verifier):
    trusting = resolver_for(verifier, trust_envoy_jwt_authn=True)
    for bad in (claims(aud="billing-api"), claims(iss="https://evil.test"), claims(now=time.time() - 999)):
        identity = trusting.resolve(facts_with(jwt_authn={"jwt_payload": bad}))
        assert identity.error == "invalid_credential", bad


def test_envoy_jwt_authn_payload_with_another_credential_is_refused(verifier, keys):
    trusting = resolver_for(verifier, trust_envoy_jwt_authn=True)
    payload = claims()
    same = keys["RS256"].sign(payload)
    assert trusting.resolve(facts_with({"authorization": f"Bearer {same}"}, {"jwt_payload": payload})).authenticated
    other = keys["RS256"].sign(claims(sub="someone-else"))
    for headers in ({"authorization": f"Bearer {other}"}, {"x-api-key": "sk-llm-abc"},
                    {"authorization": "Bearer sk-llm-abc"}):
        identity = trusting.resolve(facts_with(headers, {"jwt_payload": payload}))
        assert identity.error == "invalid_credential", headers
    two = trusting.resolve(facts_with(jwt_authn={"a": payload, "b": claims(sub="x")}))
    assert two.error == "invalid_credential"


def test_resolver_from_tenants_reads_jwks_files_relative_to_the_tenant_file(tmp_path, keys):
    from llm_authz.identity.jwks import JwksRegistry
    from llm_authz.tenants import load_tenants
    from tests.identity_fixtures import write_jwks

    write_jwks(tmp_path / "keys" / "acme.jwks.json", keys["EdDSA"])
    (tmp_path / "acme.yaml").write_text(
        "id: acme\ntier: premium\ncredentials:\n  jwt:\n"
        f"    - {{issuer: '{ISSUER}', audiences: [{AUDIENCE}], jwks_file: keys/acme.jwks.json}}\n")
    tenants, errors = load_tenants(tmp_path)
    assert not errors
    resolver = IdentityResolver.from_tenants(tenants, Config(), JwksRegistry())
    token = keys["EdDSA"].sign(claims())
    assert resolver.resolve(facts_with({"authorization": f"Bearer {token}"})).tenant == "acme"
    assert signature_of(token) not in repr(resolver.resolve(facts_with({"authorization": f"Bearer {token}x"})))
