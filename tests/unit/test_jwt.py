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
from llm_authz.identity.jwt import MAX_TOKEN_CHARS, IssuerBinding, JwtVerifier, scopes_of
from llm_authz.identity.model import IdentityError
from llm_authz.identity.resolve import TWO_CREDENTIALS, IdentityResolver
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


UNSIGNED = "unsigned tokens are not accepted"
HMAC = "tokens signed with a shared secret (HMAC) are not accepted"
MALFORMED = "the token is malformed"
BAD_SIGNATURE = "the token's signature is not valid"
UNTRUSTED = "the token's issuer is not trusted"
NOT_A_NUMBER = "the token's 'exp' claim is not a number"


def _raw(header: bytes, payload: bytes) -> str:
    return b64url(header) + "." + b64url(payload) + ".AAAA"


# Each rejection with the exact description the client reads in WWW-Authenticate.
REJECTIONS = {
    "alg none": (lambda k: unsigned_token(claims(), kid=k["RS256"].kid), UNSIGNED),
    "alg none, no kid": (lambda k: unsigned_token(claims(), kid=None), UNSIGNED),
    "alg NONE": (lambda k: unsigned_token(claims(), alg="NONE"), UNSIGNED),
    "alg nOnE with a signature": (lambda k: unsigned_token(claims(), alg="nOnE") + "c2ln", UNSIGNED),
    "HS256 with the issuer's public key as secret": (
        lambda k: hmac_token(claims(), k["RS256"].public_pem(), kid=k["RS256"].kid), HMAC),
    "HS512 with the issuer's JWK as secret": (
        lambda k: hmac_token(claims(), orjson.dumps(k["ES256"].jwk), kid=k["ES256"].kid, alg="HS512"), HMAC),
    "hs256 in lower case": (lambda k: _raw(b'{"alg":"hs256"}', orjson.dumps(claims())), HMAC),
    "unknown kid": (lambda k: new_key("RS256", kid="made-up").sign(claims()), "the token's signing key is not known"),
    "another key with a known kid": (lambda k: new_key("ES256", kid=k["ES256"].kid).sign(claims()), BAD_SIGNATURE),
    "EC token naming an RSA kid": (lambda k: new_key("ES256", kid=k["RS256"].kid).sign(claims()),
                                   "the token's signing algorithm does not match its key"),
    "tampered payload": (lambda k: _tampered(k["RS256"].sign(claims())), BAD_SIGNATURE),
    "signature cut off": (lambda k: k["RS256"].sign(claims()).rsplit(".", 1)[0] + ".", BAD_SIGNATURE),
    "signature not base64url": (lambda k: k["RS256"].sign(claims()).rsplit(".", 1)[0] + ".!!!!", MALFORMED),
    "not a JWT": (lambda k: "a.b.c", MALFORMED),
    "two parts": (lambda k: k["RS256"].sign(claims()).rsplit(".", 1)[0], MALFORMED),
    "payload not an object": (lambda k: _raw(b'{"alg":"RS256"}', b"[1]"), MALFORMED),
    "header not an object": (lambda k: _raw(b'["RS256"]', orjson.dumps(claims())), MALFORMED),
    "kid not a string": (lambda k: _raw(b'{"alg":"RS256","kid":7}', orjson.dumps(claims())),
                         "the token header is malformed"),
    "alg not a string": (lambda k: _raw(b'{"alg":["RS256"]}', orjson.dumps(claims())),
                         "the token header is malformed"),
    "alg unknown": (lambda k: _raw(b'{"alg":"ES256K"}', orjson.dumps(claims())),
                    "the token's signing algorithm is not supported"),
    "other issuer": (lambda k: k["RS256"].sign(claims(iss="https://evil.test")), UNTRUSTED),
    "issuer with trailing slash": (lambda k: k["RS256"].sign(claims(iss=ISSUER + "/")), UNTRUSTED),
    "no issuer": (lambda k: k["RS256"].sign(claims(iss=None)), "the token names no issuer"),
    "issuer not a string": (lambda k: _raw(b'{"alg":"RS256"}', orjson.dumps(claims(iss=7))), "the token names no issuer"),
    "empty issuer": (lambda k: k["RS256"].sign(claims(iss="")), "the token names no issuer"),
    "other audience": (lambda k: k["RS256"].sign(claims(aud="billing-api")),
                       "the token is not meant for this service (audience)"),
    "no audience": (lambda k: k["RS256"].sign(claims(aud=None)), "the token has no audience"),
    "audience not strings": (lambda k: k["RS256"].sign(claims(aud=[1, 2])), "the token's audience is malformed"),
    "audience an object": (lambda k: k["RS256"].sign(claims(aud={AUDIENCE: 1})), "the token's audience is malformed"),
    "expired": (lambda k: k["RS256"].sign(claims(now=time.time() - 400)), "the token has expired"),
    "no expiry": (lambda k: k["RS256"].sign({**claims(), "exp": None}), "the token has no expiry (exp)"),
    "expiry not a number": (lambda k: k["RS256"].sign({**claims(), "exp": "tomorrow"}), NOT_A_NUMBER),
    "expiry a boolean": (lambda k: k["RS256"].sign({**claims(), "exp": True}), NOT_A_NUMBER),
    "not valid yet": (lambda k: k["RS256"].sign(claims(nbf=int(time.time()) + 120)), "the token is not valid yet (nbf)"),
    "issued in the future": (lambda k: k["RS256"].sign(claims(now=time.time() + 120)),
                             "the token was issued in the future (iat)"),
    "no subject": (lambda k: k["RS256"].sign(claims(sub=None)), "the token names no subject"),
    "scope not a string": (lambda k: k["RS256"].sign(claims(scope=None, scp=[1])),
                           "the token's 'scp' claim is not a string or a list of strings"),
    "too large": (lambda k: k["RS256"].sign(claims(pad="x" * 20000)), "the token is too large"),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_rejections_say_why_without_echoing_anything(verifier, keys, name):
    make, expected = REJECTIONS[name]
    token = make(keys)
    description = rejection(verifier, token)
    assert description == expected
    for part in [token, *token.split("."), "user-123", ISSUER, "https://evil.test", "billing-api",
                 "made-up", *(k.kid for k in keys.values())]:
        if part and len(part) > 3:
            assert part not in description


@pytest.mark.parametrize("names, subject", [
    ({"client_id": "svc-billing"}, "svc-billing"),  # client-credentials tokens name the client, not a user
    ({"azp": "svc-billing"}, "svc-billing"),
    ({"sub": "", "client_id": "svc-billing", "azp": "other"}, "svc-billing"),
    ({"sub": 7, "azp": "svc-billing"}, "svc-billing"),  # a subject must be a non-empty string
])
def test_the_subject_is_sub_else_client_id_else_azp(verifier, keys, names, subject):
    assert verify(verifier, keys["ES256"].sign({**claims(sub=None), **names})).subject == subject


def test_an_audience_list_needs_one_audience_of_the_service(verifier, keys):
    assert verify(verifier, keys["ES256"].sign(claims(aud=["billing-api", AUDIENCE]))).tenant == "acme"
    assert rejection(verifier, keys["ES256"].sign(claims(aud=["billing-api"]))) == (
        "the token is not meant for this service (audience)")


def test_times_are_checked_to_the_second_with_the_leeway(verifier, keys):
    t = 1_800_000_000
    assert rejection(verifier, keys["ES256"].sign(claims(now=t - 330)), t) == "the token has expired"  # exp = t - 30
    verify(verifier, keys["ES256"].sign(claims(now=t - 329)), t)
    verify(verifier, keys["ES256"].sign(claims(now=t, nbf=t + 30)), t)
    verify(verifier, keys["ES256"].sign(claims(now=t, nbf=t + 10)), t)
    assert rejection(verifier, keys["ES256"].sign(claims(now=t, nbf=t + 31)), t) == "the token is not valid yet (nbf)"
    verify(verifier, keys["ES256"].sign(claims(now=t + 30)), t)  # issued at t + 30
    assert rejection(verifier, keys["ES256"].sign(claims(now=t + 31)), t) == "the token was issued in the future (iat)"


def test_a_token_of_exactly_the_size_limit_is_read(verifier, keys):
    def token_of(length: int) -> str:
        for pad in range(MAX_TOKEN_CHARS):
            token = keys["ES256"].sign(claims(pad="x" * pad))
            if len(token) >= length:
                return token
        raise AssertionError

    at_limit = next(t for t in (token_of(MAX_TOKEN_CHARS - d) for d in range(4)) if len(t) == MAX_TOKEN_CHARS)
    assert verify(verifier, at_limit).tenant == "acme"
    over = next(t for t in (token_of(MAX_TOKEN_CHARS + d) for d in range(1, 5)) if len(t) > MAX_TOKEN_CHARS)
    assert rejection(verifier, over) == "the token is too large"


def test_scopes_come_from_the_claim_the_issuer_entry_names(keys):
    v = JwtVerifier([binding(key_set(keys["ES256"]), scopes_claim="permissions")])
    token = keys["ES256"].sign(claims(scope="admin", permissions=["inference:invoke"]))
    assert verify(v, token).scopes == ["inference:invoke"]


def test_leeway_accepts_small_clock_skew(verifier, keys):
    now = time.time()
    verify(verifier, keys["ES256"].sign(claims(now=now - 310)), now)  # expired 10 s ago, leeway 30 s
    verify(verifier, keys["ES256"].sign(claims(now=now + 20)), now)  # issued 20 s in the future
    assert "expired" in rejection(verifier, keys["ES256"].sign(claims(now=now - 340)), now)


def test_algorithms_named_by_the_issuer_are_the_only_ones_accepted(keys):
    v = JwtVerifier([binding(key_set(keys["RS256"], keys["ES256"]), algorithms=["ES256"])])
    verify(v, keys["ES256"].sign(claims()))
    assert rejection(v, keys["RS256"].sign(claims())) == "the token's signing algorithm is not accepted for its issuer"


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
    assert rejection(two, new_key("ES256", kid=None).sign(claims())) == (
        "the token names no key id (kid) and its issuer has several keys")


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
        assert rejection(v, keys["ES256"].sign(claims(**bad))) == (
            "the token does not name one tenant that trusts its issuer")


def test_a_single_tenant_with_tenant_claim_requires_it(keys):
    v = JwtVerifier([binding(key_set(keys["ES256"]), "acme", tenant_claim="org")])
    assert verify(v, keys["ES256"].sign(claims(org="acme"))).tenant == "acme"
    assert rejection(v, keys["ES256"].sign(claims(org="hobbyist"))) == (
        "the token does not name a tenant that trusts its issuer")
    assert rejection(v, keys["ES256"].sign(claims())) == "the token does not name a tenant that trusts its issuer"


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
        assert (identity.error, identity.method, identity.error_description) == (
            "invalid_credential", "jwt", TWO_CREDENTIALS), headers
    # Other entries in the filter's metadata (a header_in_metadata value, say) are not tokens.
    beside = trusting.resolve(facts_with(jwt_authn={"jwt_payload": payload, "hdr": {"alg": "RS256"}, "t": "issuer"}))
    assert beside.authenticated and beside.subject == "user-123"
    two = trusting.resolve(facts_with(jwt_authn={"a": payload, "b": claims(sub="x")}))
    assert (two.error, two.method, two.error_description) == (
        "invalid_credential", "jwt", "more than one token was presented")


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
