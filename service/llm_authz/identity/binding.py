"""Binding credentials to one identity and one tenant, so that no request can borrow another's.

A request carries at most one request credential (a bearer token, an API key, or a token
Envoy's jwt_authn already verified) and may come over mTLS with a client certificate. Both
are verified on their own; here they must agree on the tenant, or the request is refused.
Nothing a client writes in a header (x-llm-authz-*, x-tenant-id) is ever taken as identity.
"""

from __future__ import annotations

from llm_authz.identity.model import Identity, IdentityError, missing


def bind(request: Identity | None, peer: Identity | None, principal: str | None) -> Identity:
    """The request's one identity.

    request: the verified request credential, if any; peer: the identity the client certificate's
    principal maps to, if any; principal: that principal, registered or not. With both, the
    request credential decides (its scopes, not the union) and the certificate must name the
    same tenant. A certificate no tenant file names is no credential on its own.
    """
    if request is None:
        if peer is not None:
            return peer
        if principal:
            raise IdentityError("mtls", "the client certificate's identity is not registered for any tenant")
        return missing()
    if peer is not None and peer.tenant != request.tenant:
        raise IdentityError(request.method, "the credentials presented belong to different tenants")
    return request
