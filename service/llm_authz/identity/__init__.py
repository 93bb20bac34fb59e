"""Who is calling: credentials are verified here, in the service, and the policy sees only the result."""

from llm_authz.identity.model import Identity, IdentityError

__all__ = ["Identity", "IdentityError"]
