"""One identity per request, from whichever credential the client presented."""

from __future__ import annotations

from llm_authz.facts.request import RequestFacts
from llm_authz.identity.api_keys import ApiKeyIndex
from llm_authz.identity.credentials import presented_credential
from llm_authz.identity.model import Identity, IdentityError, invalid, missing


class IdentityResolver:
    """Verifies the presented credential against the tenants' credentials. Never raises."""

    def __init__(self, api_keys: ApiKeyIndex):
        self.api_keys = api_keys

    def resolve(self, facts: RequestFacts) -> Identity:
        try:
            credential = presented_credential(facts)
            if credential is None:
                return missing()
            if credential.kind == "bearer" and credential.looks_like_jwt:
                raise IdentityError("jwt", "no trusted issuer for this token")
            return self.api_keys.verify(credential.value, facts.time)
        except IdentityError as exc:
            return invalid(exc.method, exc.description)
