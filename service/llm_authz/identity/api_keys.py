"""API keys: looked up by SHA-256, with per-key scopes and expiry. The key itself is never kept."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from llm_authz.identity.model import Identity, IdentityError
from llm_authz.tenants import TenantFile

KEY_PREFIX = "sk-llm-"


@dataclass(frozen=True, slots=True)
class ApiKeyGrant:
    tenant: str
    key_id: str
    scopes: tuple[str, ...]
    expires: datetime | None


class ApiKeyIndex:
    """SHA-256 of the key → grant, built from every tenant file."""

    def __init__(self, tenants: dict[str, TenantFile]):
        self._by_digest: dict[str, ApiKeyGrant] = {}
        for tf in tenants.values():
            for key in tf.tenant.credentials.api_keys:
                self._by_digest[key.sha256] = ApiKeyGrant(tf.tenant.id, key.id, tuple(key.scopes), key.expires)

    def __len__(self) -> int:
        return len(self._by_digest)

    def verify(self, key: str, now: datetime) -> Identity:
        """The identity of a key, or IdentityError (unknown or expired; which one is not told apart)."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        grant = self._by_digest.get(digest)
        if grant is None:
            raise IdentityError("api_key", "the API key is not valid")
        if grant.expires is not None and now >= grant.expires:
            raise IdentityError("api_key", "the API key has expired")
        return Identity(
            authenticated=True, method="api_key", subject=grant.key_id, tenant=grant.tenant,
            scopes=list(grant.scopes), key_id=grant.key_id,
        )


def new_key() -> tuple[str, str]:
    """A fresh key with 256 bits of entropy, and its SHA-256 (the only part a tenant file stores)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()
