"""JWT bearer tokens: signature by PyJWT against the issuer's key set, then issuer, audience, times,
tenant and scopes. Every rejection says why in words that echo no token, key or claim value.
"""

from __future__ import annotations

import base64
import binascii
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidSignatureError, PyJWTError

from llm_authz.identity.jwks import SUPPORTED_ALGORITHMS, KeySource
from llm_authz.identity.model import Identity, IdentityError
from llm_authz.tenants import JwtIssuer

METHOD = "jwt"
MAX_TOKEN_CHARS = 16 * 1024
JWT_AUTHN_NAMESPACE = "envoy.filters.http.jwt_authn"
_JWS = PyJWS()
SIGNATURE_CACHE_SIZE = 4096


class SignatureCache:
    """Tokens whose signature was verified, with the key object that verified them.

    Verifying an RS256 or ES256 signature is most of a JWT check, and a client sends the same
    token for its whole lifetime. Only the signature check is remembered: a hit needs the very
    same key object the current key set returns for the token (a rotated, removed or refetched
    key is a new object: a miss), and every claim check (issuer, audience, exp, nbf, iat,
    tenant) still runs on every request. Bounded; a reload starts a new cache.
    """

    def __init__(self, size: int = SIGNATURE_CACHE_SIZE):
        self.size = size
        self._entries: dict[str, tuple[Any, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, token: str, key: Any) -> bytes | None:
        entry = self._entries.get(token)
        if entry is not None and entry[0] is key:
            return entry[1]
        return None

    def put(self, token: str, key: Any, payload: bytes) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                # Drop the oldest half (dicts keep insertion order): cheap, and hot tokens come back.
                for stale in list(self._entries)[: self.size // 2]:
                    del self._entries[stale]
            self._entries[token] = (key, payload)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class IssuerBinding:
    """One tenant's trust in one issuer: the tenant file entry and where its keys come from."""

    tenant: str
    entry: JwtIssuer
    keys: KeySource
    algorithms: frozenset[str]


def _reject(description: str) -> IdentityError:
    return IdentityError(METHOD, description)


def _number(payload: dict[str, Any], claim: str) -> float | None:
    """A NumericDate claim, None when absent; a bool, string or non-finite number is malformed."""
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _reject(f"the token's '{claim}' claim is not a number")
    return float(value)


def scopes_of(payload: dict[str, Any], claim: str | None) -> list[str]:
    """Scopes from the named claim, else `scope` (space-separated) or `scp` (string or array)."""
    for name in ([claim] if claim else ["scope", "scp"]):
        if name not in payload:
            continue
        value = payload[name]
        if isinstance(value, str):
            items = value.split()
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = [part for v in value for part in v.split()]
        else:
            raise _reject(f"the token's '{name}' claim is not a string or a list of strings")
        return list(dict.fromkeys(items))
    return []


def _subject(payload: dict[str, Any]) -> str:
    for name in ("sub", "client_id", "azp"):
        value = payload.get(name)
        if isinstance(value, str) and value:
            return value
    raise _reject("the token names no subject")


class JwtVerifier:
    """The issuers that tenant files trust, and the checks every token passes."""

    def __init__(self, bindings: Iterable[IssuerBinding], leeway_seconds: float = 30.0):
        self.by_issuer: dict[str, list[IssuerBinding]] = {}
        for b in bindings:
            self.by_issuer.setdefault(b.entry.issuer, []).append(b)
        self.leeway = float(leeway_seconds)
        self.signatures = SignatureCache()

    def __bool__(self) -> bool:
        return bool(self.by_issuer)

    # ---- a token the service verifies ------------------------------------------------------

    def verify(self, token: str, now: datetime, wait_until: float) -> Identity:
        """The identity a token proves, or IdentityError. Waits for a key refetch only until wait_until."""
        if len(token) > MAX_TOKEN_CHARS:
            raise _reject("the token is too large")
        header, claimed = peek(token)
        alg = header.get("alg")
        kid = header.get("kid")
        if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
            raise _reject("the token header is malformed")
        if alg.lower() == "none":
            raise _reject("unsigned tokens are not accepted")
        if alg.upper().startswith("HS"):
            raise _reject("tokens signed with a shared secret (HMAC) are not accepted")
        if alg not in SUPPORTED_ALGORITHMS:
            raise _reject("the token's signing algorithm is not supported")
        binding = self._binding(claimed)
        if alg not in binding.algorithms:
            raise _reject("the token's signing algorithm is not accepted for its issuer")
        key = binding.keys.key_for(kid, alg, wait_until)
        if key is None:
            raise _reject("the token's signing key is not known" if kid is not None
                          else "the token names no key id (kid) and its issuer has several keys")
        if alg not in key.algorithms:
            raise _reject("the token's signing algorithm does not match its key")
        try:
            raw = self.signatures.get(token, key)
            if raw is None:
                raw = _JWS.decode_complete(token, key=key.key, algorithms=[alg])["payload"]
                self.signatures.put(token, key, raw)
            payload = orjson.loads(raw)
        except InvalidSignatureError:
            raise _reject("the token's signature is not valid") from None
        except (PyJWTError, ValueError, TypeError, RecursionError):
            raise _reject("the token is malformed") from None
        # From here on only the verified payload counts; it must route to the same tenant entry.
        if not isinstance(payload, dict) or self._binding(payload) is not binding:
            raise _reject("the token is malformed")
        return self._identity(payload, binding, now, kid)

    # ---- a payload Envoy's jwt_authn filter already verified -----------------------------------

    def from_verified_payload(self, payload: dict[str, Any], now: datetime) -> Identity:
        """The identity of a payload whose signature Envoy verified: every other check still applies."""
        return self._identity(payload, self._binding(payload), now, None)

    # ---- shared checks -----------------------------------------------------------------------

    def _binding(self, payload: dict[str, Any]) -> IssuerBinding:
        """The tenant entry the token belongs to: by issuer, then by tenant_claim when tenants share it."""
        iss = payload.get("iss")
        if not isinstance(iss, str) or not iss:
            raise _reject("the token names no issuer")
        bindings = self.by_issuer.get(iss)
        if not bindings:
            raise _reject("the token's issuer is not trusted")
        if len(bindings) == 1:
            return bindings[0]
        named = [b for b in bindings if payload.get(b.entry.tenant_claim or "") == b.tenant]
        if len(named) != 1:
            raise _reject("the token does not name one tenant that trusts its issuer")
        return named[0]

    def _identity(self, payload: dict[str, Any], binding: IssuerBinding, now: datetime,
                  kid: str | None) -> Identity:
        entry = binding.entry
        if payload.get("iss") != entry.issuer:  # exact match, never a prefix or normalised form
            raise _reject("the token's issuer is not trusted")
        aud = payload.get("aud")
        if aud is None:
            raise _reject("the token has no audience")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise _reject("the token's audience is malformed")
        if not set(audiences) & set(entry.audiences):
            raise _reject("the token is not meant for this service (audience)")
        t = now.timestamp()
        exp = _number(payload, "exp")
        if exp is None:
            raise _reject("the token has no expiry (exp)")
        if exp <= t - self.leeway:
            raise _reject("the token has expired")
        nbf = _number(payload, "nbf")
        if nbf is not None and nbf > t + self.leeway:
            raise _reject("the token is not valid yet (nbf)")
        iat = _number(payload, "iat")
        if iat is not None and iat > t + self.leeway:
            raise _reject("the token was issued in the future (iat)")
        if entry.tenant_claim is not None and payload.get(entry.tenant_claim) != binding.tenant:
            raise _reject("the token does not name a tenant that trusts its issuer")
        claims = {name: payload[name] for name in entry.claims if name in payload}
        return Identity(
            authenticated=True, method=METHOD, subject=_subject(payload), issuer=entry.issuer,
            tenant=binding.tenant, scopes=scopes_of(payload, entry.scopes_claim), key_id=kid, claims=claims,
        )


def envoy_verified_payloads(attributes: Any) -> list[dict[str, Any]]:
    """Payloads Envoy's jwt_authn filter verified (payload_in_metadata), from the CheckRequest metadata.

    Only Envoy's filters write dynamic metadata; a client cannot. Entries without `iss` (a header
    written by header_in_metadata, say) are not payloads.
    """
    namespace = attributes.metadata_context.filter_metadata.get(JWT_AUTHN_NAMESPACE)
    if namespace is None:
        return []
    found = []
    for value in MessageToDict(namespace).values():
        if isinstance(value, dict) and "iss" in value:
            found.append(value)
    return found


def _segment(part: str) -> Any:
    return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload, decoded but NOT verified: only to find the issuer entry and its key.

    PyJWT then parses and verifies the token itself, and only its verified payload is trusted.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise _reject("the token is malformed")
    try:
        header, payload = _segment(parts[0]), _segment(parts[1])
    except (ValueError, binascii.Error, UnicodeError):
        raise _reject("the token is malformed") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise _reject("the token is malformed")
    return header, payload


def unverified_principal(token: str) -> tuple[Any, Any] | None:
    """(iss, sub) of a token without verifying it: only to see two credentials disagree."""
    try:
        payload = peek(token)[1]
    except IdentityError:
        return None
    return payload.get("iss"), payload.get("sub")
