"""A token's signature is verified once per key; every other check still runs on every request."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest

from llm_authz.identity import jwt as jwt_module
from llm_authz.identity.jwks import SUPPORTED_ALGORITHMS, KeySet, StaticKeySource, parse_jwks
from llm_authz.identity.jwt import IssuerBinding, JwtVerifier, SignatureCache
from llm_authz.identity.model import IdentityError
from llm_authz.tenants import JwtIssuer
from tests.identity_fixtures import AUDIENCE, ISSUER, claims, jwks_of, new_key


class Source:
    """A key source whose key set can be swapped, as a JWKS refresh does."""

    def __init__(self, keyset: KeySet):
        self.keyset = keyset

    def key_for(self, kid: str | None, alg: str, wait_until: float) -> Any:
        return self.keyset.find(kid, alg)


@pytest.fixture(scope="module")
def key() -> Any:
    return new_key("RS256", kid="k1")


def keyset(*keys: Any) -> KeySet:
    return parse_jwks(orjson.dumps(jwks_of(*keys)))[0]


def make_verifier(source: Any) -> JwtVerifier:
    issuer = JwtIssuer(issuer=ISSUER, audiences=[AUDIENCE], jwks_file="keys.json")
    return JwtVerifier([IssuerBinding("acme", issuer, source, frozenset(SUPPORTED_ALGORITHMS))], leeway_seconds=30)


def verify(verifier: JwtVerifier, token: str, now: float | None = None) -> Any:
    when = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc)
    return verifier.verify(token, when, time.monotonic() + 0.2)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = jwt_module._JWS.decode_complete

    def counting(token: str, **kw: Any) -> Any:
        calls.append(token)
        return real(token, **kw)

    monkeypatch.setattr(jwt_module._JWS, "decode_complete", counting)
    return calls


def test_the_same_token_is_verified_once(key: Any, decodes: list[str]) -> None:
    verifier = make_verifier(StaticKeySource(keyset(key)))
    token = key.sign(claims())
    first = verify(verifier, token)
    second = verify(verifier, token)
    assert first == second and first.tenant == "acme"
    assert decodes == [token]


def test_expiry_is_checked_on_every_request(key: Any, decodes: list[str]) -> None:
    verifier = make_verifier(StaticKeySource(keyset(key)))
    now = time.time()
    token = key.sign(claims(now=now, lifetime=60))
    verify(verifier, token, now)
    with pytest.raises(IdentityError, match="expired"):
        verify(verifier, token, now + 60 + 31)  # past exp and the leeway: the cached signature does not help
    assert len(decodes) == 1


def test_a_removed_or_rotated_key_is_a_miss(key: Any, decodes: list[str]) -> None:
    source = Source(keyset(key))
    verifier = make_verifier(source)
    token = key.sign(claims())
    verify(verifier, token)
    source.keyset = keyset(new_key("RS256", kid="k2"))  # k1 gone
    with pytest.raises(IdentityError, match="signing key is not known"):
        verify(verifier, token)
    source.keyset = keyset(key)  # k1 back, as a new key object (a refetch): verified again
    verify(verifier, token)
    assert decodes == [token, token]


def test_a_key_with_the_same_kid_but_other_material_does_not_reuse_the_signature(key: Any) -> None:
    source = Source(keyset(key))
    verifier = make_verifier(source)
    token = key.sign(claims())
    verify(verifier, token)
    source.keyset = keyset(new_key("RS256", kid="k1"))  # same kid, another key pair
    with pytest.raises(IdentityError, match="signature is not valid"):
        verify(verifier, token)


def test_a_bad_signature_is_never_remembered(key: Any, decodes: list[str]) -> None:
    verifier = make_verifier(StaticKeySource(keyset(key)))
    other = new_key("RS256", kid="k1")
    forged = other.sign(claims())
    for _ in range(2):
        with pytest.raises(IdentityError, match="signature is not valid"):
            verify(verifier, forged)
    assert decodes == [forged, forged]
    assert len(verifier.signatures) == 0


def test_the_cache_is_bounded() -> None:
    cache = SignatureCache(size=8)
    marker = object()
    for i in range(100):
        cache.put(f"t{i}", marker, b"{}")
        assert len(cache) <= 8
    assert cache.get("t99", marker) == b"{}"
    assert cache.get("t99", object()) is None
    assert cache.get("t0", marker) is None
    half = SignatureCache(size=8)
    for i in range(9):
        half.put(f"t{i}", marker, b"{}")
    # The ninth token made room by dropping the oldest half (t0..t3); the newest ones stay.
    assert len(half) == 5 and half.get("t3", marker) is None and half.get("t4", marker) == b"{}"
