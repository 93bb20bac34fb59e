"""CheckRequest → RequestFacts: the HTTP request as Envoy saw it, lower-cased and decoded once."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, unquote

from envoy.service.auth.v3 import external_auth_pb2

# Headers whose values are credentials: replaced by "[redacted]" wherever the request is shown.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
     "cookie", "set-cookie"}
)
REDACTED = "[redacted]"
SERVICE_HEADER_PREFIX = "x-llm-authz-"
# Query parameters that carry credentials (Gemini's ?key=, OAuth's ?access_token=...).
CREDENTIAL_QUERY_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "access_token", "token",
                                     "password", "secret"})


def header_key(name: str) -> str:
    """A header name as a CGI/WSGI server reads it: case and '_' versus '-' do not count, so
    `X_LLM_AUTHZ_Tenant` is `x-llm-authz-tenant` to the upstream and must be treated as such."""
    return name.lower().replace("_", "-")


# Every header name of every request is classified several times per check (input, audit copy,
# response); requests repeat the same few dozen names, so the answers are remembered (bounded:
# names are the client's to choose).
@lru_cache(maxsize=2048)
def is_credential_header(name: str) -> bool:
    return header_key(name) in CREDENTIAL_HEADERS


@lru_cache(maxsize=2048)
def is_reserved_header(name: str) -> bool:
    """A name the service sets itself (x-llm-authz-*), in any spelling an upstream could fold."""
    return header_key(name).startswith(SERVICE_HEADER_PREFIX)


# Headers whose value is "<scheme> <credentials>" (RFC 9110 §11): the scheme is kept when redacted.
_SCHEMED_HEADERS = frozenset({"authorization", "proxy-authorization"})
_SCHEME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,32}")


def redact_credential(name: str, value: str) -> str:
    """A credential header's value as the policy and the log see it by default: `Bearer [redacted]`,
    `Basic [redacted]` (the scheme tells the policy how the caller tried to authenticate), else
    `[redacted]`."""
    if header_key(name) in _SCHEMED_HEADERS:
        scheme, sep, _ = value.strip().partition(" ")
        if sep and _SCHEME.fullmatch(scheme):
            return f"{scheme} {REDACTED}"
    return REDACTED


def redact_query(query: str) -> str:
    """The query string with the values of credential parameters replaced by [redacted]."""
    if not query:
        return query
    parts = []
    for item in query.split("&"):
        name, sep, _ = item.partition("=")
        if sep and unquote(name).lower() in CREDENTIAL_QUERY_PARAMS:
            item = f"{name}={REDACTED}"
        parts.append(item)
    return "&".join(parts)


@dataclass(slots=True)
class RequestFacts:
    """What the service knows about one HTTP request before identity and policy."""

    id: str
    time: datetime
    method: str
    scheme: str
    host: str
    path: str
    query: str
    headers: dict[str, str]
    protocol: str
    source_address: str | None
    source_port: int
    principal: str
    certificate_present: bool
    body: bytes
    attributes: Any = field(repr=False)  # the AttributeContext message, for OPA-Envoy fields
    _time_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def time_text(self) -> str:
        """`time` in RFC 3339 with microseconds (input.request.time), formatted once."""
        if self._time_text is None:
            self._time_text = self.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return self._time_text

    @property
    def path_segments(self) -> list[str]:
        return [unquote(s) for s in self.path.split("/") if s]

    @property
    def parsed_query(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True) if self.query else {}

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def redacted_headers(self, raw_credentials: bool = False) -> dict[str, str]:
        """Headers for input.request.headers: no pseudo-headers, credentials redacted (unless the
        operator opted in to raw credentials), and no client-sent x-llm-authz-* header (those names
        are the service's own: a careless policy must not be able to read a spoofed one as identity)."""
        return {
            k: (redact_credential(k, v) if is_credential_header(k) and not raw_credentials else v)
            for k, v in self.headers.items()
            if not k.startswith(":") and not is_reserved_header(k)
        }


def _headers(http: Any) -> dict[str, str]:
    """Lower-cased header map; repeated headers (Envoy's header_map form) are joined with ','."""
    if http.headers:
        return {k.lower(): v for k, v in http.headers.items()}
    merged: dict[str, str] = {}
    for hv in http.header_map.headers:
        value = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
        key = hv.key.lower()
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    return merged


@lru_cache(maxsize=4096)  # callers repeat; bounded, as addresses are many
def _ip_or_none(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def from_check_request(request: external_auth_pb2.CheckRequest, now: datetime | None = None) -> RequestFacts:
    """Read the facts out of a CheckRequest. Never raises on odd values: odd values become empty ones."""
    attrs = request.attributes
    http = attrs.request.http
    headers = _headers(http)
    raw_path = http.path or headers.get(":path", "/")
    path, _, query = raw_path.partition("?")
    if attrs.request.HasField("time"):
        time = attrs.request.time.ToDatetime(tzinfo=timezone.utc)
    else:
        time = now or datetime.now(timezone.utc)
    sock = attrs.source.address.socket_address
    body = http.raw_body if http.raw_body else http.body.encode("utf-8", "surrogateescape")
    return RequestFacts(
        id=http.id or headers.get("x-request-id", ""),
        time=time,
        method=(http.method or headers.get(":method", "")).upper(),
        scheme=http.scheme or headers.get(":scheme", ""),
        host=http.host or headers.get(":authority", ""),
        path=path,
        query=redact_query(query or http.query),
        headers=headers,
        protocol=http.protocol,
        source_address=_ip_or_none(sock.address),
        source_port=sock.port_value,
        principal=attrs.source.principal,
        certificate_present=bool(attrs.source.certificate),
        body=body,
        attributes=attrs,
    )
