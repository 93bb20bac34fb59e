"""The verified identity handed to the policy as input.identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Identity:
    authenticated: bool = False
    method: str = "none"  # jwt | api_key | mtls | none (the method tried, when it failed)
    subject: str | None = None
    issuer: str | None = None
    tenant: str | None = None
    scopes: list[str] = field(default_factory=list)
    key_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # missing_credential | invalid_credential
    error_description: str | None = None  # safe to show the client: no secret, no claim value

    def as_input(self) -> dict[str, Any]:
        return {
            "authenticated": self.authenticated,
            "method": self.method,
            "subject": self.subject,
            "issuer": self.issuer,
            "tenant": self.tenant,
            "scopes": self.scopes,
            "key_id": self.key_id,
            "claims": self.claims,
            "error": self.error,
            "error_description": self.error_description,
        }


class IdentityError(Exception):
    """A credential was presented and is not acceptable. The message is safe to show the client."""

    def __init__(self, method: str, description: str):
        super().__init__(description)
        self.method = method
        self.description = description


def missing() -> Identity:
    return Identity(error="missing_credential", error_description="no credential was presented")


def invalid(method: str, description: str) -> Identity:
    return Identity(method=method, error="invalid_credential", error_description=description)
