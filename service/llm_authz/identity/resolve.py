"""One identity per request, from whichever credentials the client presented."""

from __future__ import annotations

import time
from typing import Any

from llm_authz.config import Config
from llm_authz.errors import JwksError, TenantFileError
from llm_authz.facts.request import RequestFacts
from llm_authz.identity.api_keys import ApiKeyIndex
from llm_authz.identity.binding import bind
from llm_authz.identity.credentials import PresentedCredential, presented_credential
from llm_authz.identity.jwks import SUPPORTED_ALGORITHMS, JwksRegistry, KeySource, StaticKeySource
from llm_authz.identity.jwt import IssuerBinding, JwtVerifier, envoy_verified_payloads, unverified_principal
from llm_authz.identity.model import Identity, IdentityError, invalid
from llm_authz.identity.mtls import MtlsIndex, peer_principal
from llm_authz.tenants import TenantFile

# Without a check deadline, a key refetch is waited for at most this long.
DEFAULT_WAIT_SECONDS = 0.5
TWO_CREDENTIALS = "two different credentials were presented"


def wait_until(deadline: float | None) -> float:
    """How long identity may wait for keys: most of what is left, keeping time for the policy."""
    now = time.monotonic()
    if deadline is None:
        return now + DEFAULT_WAIT_SECONDS
    remaining = deadline - now
    return now + max(0.0, remaining - min(0.1, remaining / 2))


class IdentityResolver:
    """Verifies the presented credentials against the tenants' credentials. Never raises."""

    def __init__(self, api_keys: ApiKeyIndex, jwt: JwtVerifier | None = None, mtls: MtlsIndex | None = None,
                 trust_xfcc: bool = False, trust_envoy_jwt_authn: bool = False, jwks_urls: tuple[str, ...] = ()):
        self.api_keys = api_keys
        self.jwt = jwt or JwtVerifier(())
        self.mtls = mtls or MtlsIndex({})
        self.trust_xfcc = trust_xfcc
        self.trust_envoy_jwt_authn = trust_envoy_jwt_authn
        self.jwks_urls = jwks_urls  # the key set URLs this resolver uses (kept alive across reloads)

    @classmethod
    def from_tenants(cls, tenants: dict[str, TenantFile], config: Config, jwks: JwksRegistry) -> "IdentityResolver":
        """Build from tenant files; `jwks_url` sources come from (and stay in) the registry."""
        bindings = []
        urls = []
        for tf in tenants.values():
            for i, entry in enumerate(tf.tenant.credentials.jwt):
                source: KeySource
                if entry.jwks_url:
                    source = jwks.source(entry.jwks_url)
                    urls.append(entry.jwks_url)
                else:
                    try:
                        source = StaticKeySource.from_file(tf.resolve(entry.jwks_file or ""))
                    except JwksError as exc:
                        raise TenantFileError(str(tf.path), str(exc), field=f"credentials.jwt.{i}.jwks_file") from None
                algorithms = frozenset(entry.algorithms or SUPPORTED_ALGORITHMS)
                bindings.append(IssuerBinding(tf.tenant.id, entry, source, algorithms))
        jwks.wait_first(urls, jwks.settings.fetch_timeout_seconds)
        return cls(ApiKeyIndex(tenants), JwtVerifier(bindings, config.jwt_leeway_seconds), MtlsIndex(tenants),
                   trust_xfcc=config.trust_xfcc, trust_envoy_jwt_authn=config.trust_envoy_jwt_authn,
                   jwks_urls=tuple(urls))

    def resolve(self, facts: RequestFacts, deadline: float | None = None) -> Identity:
        """The identity of the request; an unauthenticated one saying why when no credential holds."""
        try:
            request = self._request_identity(facts, wait_until(deadline))
            principal = peer_principal(facts, self.trust_xfcc)
            peer = self.mtls.identify(principal) if principal else None
            return bind(request, peer, principal)
        except IdentityError as exc:
            return invalid(exc.method, exc.description)

    def _request_identity(self, facts: RequestFacts, until: float) -> Identity | None:
        credential = presented_credential(facts)
        if self.trust_envoy_jwt_authn:
            payloads = envoy_verified_payloads(facts.attributes)
            if payloads:
                return self._from_envoy(payloads, credential, facts)
        if credential is None:
            return None
        if credential.kind == "bearer" and credential.looks_like_jwt:
            return self.jwt.verify(credential.value, facts.time, until)
        return self.api_keys.verify(credential.value, facts.time)

    def _from_envoy(self, payloads: list[dict[str, Any]], credential: PresentedCredential | None,
                    facts: RequestFacts) -> Identity:
        """A token Envoy's jwt_authn verified: not verified twice, but it must be the only credential."""
        if len(payloads) > 1:
            raise IdentityError("jwt", "more than one token was presented")
        payload = payloads[0]
        if credential is not None:
            # The bearer token, when Envoy forwards it, must be the one it verified.
            same = (credential.kind == "bearer" and credential.looks_like_jwt
                    and unverified_principal(credential.value) == (payload.get("iss"), payload.get("sub")))
            if not same:
                raise IdentityError("jwt", TWO_CREDENTIALS)
        return self.jwt.from_verified_payload(payload, facts.time)
