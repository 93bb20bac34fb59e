"""mTLS: the client certificate's SPIFFE ID, as Envoy reports it, mapped to a tenant and scopes.

The principal comes from `attributes.source.principal` (Envoy fills it from the verified peer
certificate's URI SAN). `x-forwarded-client-cert` is read only when the deployment says so
(`trust_xfcc`), which is safe only where the Envoy in front sets it itself
(`forward_client_cert_details: SANITIZE_SET`): otherwise any client could write one.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_authz.facts.request import RequestFacts
from llm_authz.identity.model import Identity, IdentityError
from llm_authz.tenants import TenantFile

METHOD = "mtls"
XFCC_HEADER = "x-forwarded-client-cert"
MAX_XFCC_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class MtlsGrant:
    tenant: str
    scopes: tuple[str, ...]


def _split(text: str, sep: str) -> list[str]:
    """Split on sep outside double quotes (XFCC quotes values that hold ',', ';' or '=')."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ValueError("unbalanced quotes")
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def xfcc_uris(header: str) -> list[str]:
    """The URI SANs of the client certificate in the last XFCC element (the one the nearest Envoy set)."""
    if len(header) > MAX_XFCC_CHARS:
        raise ValueError("too large")
    elements = _split(header, ",")
    uris = []
    for pair in _split(elements[-1], ";"):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError("a field without '='")
        if key.strip().lower() == "uri":
            uris.append(_unquote(value))
    return uris


def peer_principal(facts: RequestFacts, trust_xfcc: bool) -> str | None:
    """The client certificate's identity: from XFCC when trusted and present, else Envoy's source.principal."""
    if trust_xfcc:
        header = facts.headers.get(XFCC_HEADER)
        if header is not None:
            try:
                uris = xfcc_uris(header)
            except ValueError:
                raise IdentityError(METHOD, "the x-forwarded-client-cert header is malformed") from None
            spiffe = [u for u in uris if u.startswith("spiffe://")]
            if len(spiffe) > 1:
                raise IdentityError(METHOD, "the client certificate carries more than one SPIFFE ID")
            if spiffe:
                return spiffe[0]
    return facts.principal or None


class MtlsIndex:
    """SPIFFE ID → tenant and scopes, from every tenant file's `credentials.mtls`."""

    def __init__(self, tenants: dict[str, TenantFile]):
        self._by_id: dict[str, MtlsGrant] = {}
        for tf in tenants.values():
            for principal in tf.tenant.credentials.mtls:
                self._by_id[principal.spiffe_id] = MtlsGrant(tf.tenant.id, tuple(principal.scopes))

    def __len__(self) -> int:
        return len(self._by_id)

    def identify(self, principal: str) -> Identity | None:
        """The identity bound to a principal, None when no tenant file names it."""
        grant = self._by_id.get(principal)
        if grant is None:
            return None
        return Identity(authenticated=True, method=METHOD, subject=principal, tenant=grant.tenant,
                        scopes=list(grant.scopes))
