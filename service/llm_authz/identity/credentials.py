"""Reading credentials out of request headers, without ever logging or echoing them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm_authz.facts.request import RequestFacts
from llm_authz.identity.model import IdentityError

_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class PresentedCredential:
    kind: str  # bearer | api_key
    value: str

    @property
    def looks_like_jwt(self) -> bool:
        return bool(_JWT_SHAPE.match(self.value))


API_KEY_HEADERS = ("x-api-key", "x-goog-api-key")


def presented_credential(facts: RequestFacts) -> PresentedCredential | None:
    """The one credential in Authorization, x-api-key (Anthropic SDKs) or x-goog-api-key (Gemini SDKs);
    IdentityError when malformed or conflicting."""
    bearer = None
    auth = facts.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or not _TOKEN.match(token):
            raise IdentityError("none", "the Authorization header is malformed (expected one 'Bearer <token>')")
        bearer = token
    keys: set[str] = set()
    for name in API_KEY_HEADERS:
        value = facts.headers.get(name)
        if value is not None:
            value = value.strip()
            if not value or not _TOKEN.match(value):
                raise IdentityError("api_key", f"the {name} header is malformed")
            keys.add(value)
    if len(keys) > 1:
        raise IdentityError("none", "two different credentials were presented")
    api_key = next(iter(keys), None)
    if bearer is not None and api_key is not None and bearer != api_key:
        raise IdentityError("none", "two different credentials were presented")
    if bearer is not None:
        return PresentedCredential("bearer", bearer)
    if api_key is not None:
        return PresentedCredential("api_key", api_key)
    return None
