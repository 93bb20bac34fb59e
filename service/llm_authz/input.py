"""The OPA input document, schema `llm-authz/input/v1`.

`build_input` makes the document as plain dicts (it runs on every check); the pydantic models
below describe the same document field by field and generate `docs/input-v1.schema.json`.
A test holds the two together. Adding a field is fine; renaming one breaks policies.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field

from llm_authz.facts.payload import PayloadFacts, body_cut_short
from llm_authz.facts.request import REDACTED, RequestFacts, is_credential_header, redact_credential, redact_query
from llm_authz.facts.routes import Route
from llm_authz.identity.jwt import JWT_AUTHN_NAMESPACE
from llm_authz.identity.model import Identity
from llm_authz.quota import QuotaUsage
from llm_authz.tenants import TenantFile

SCHEMA = "llm-authz/input/v1"
TENANT_HINT_HEADER = "x-tenant-id"


def rfc3339(facts: RequestFacts) -> str:
    return facts.time_text


def build_input(
    facts: RequestFacts,
    route: Route | None,
    payload: PayloadFacts,
    identity: Identity,
    tenant: TenantFile | None,
    quota: QuotaUsage | None = None,
    raw_credentials: bool = False,
    signals: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The input document for one check. Credential headers are redacted (`Bearer [redacted]`)
    unless `raw_credentials` (the operator's opt-in for OPA-Envoy policies that decode them);
    the audit record redacts them either way. The body is not redacted here."""
    headers = facts.redacted_headers(raw_credentials)
    segments = facts.path_segments
    parsed_query = facts.parsed_query
    model_name = route.model if route and route.model is not None else payload.model
    return {
        "schema": SCHEMA,
        "request": {
            "id": facts.id,
            "time": rfc3339(facts),
            "method": facts.method,
            "scheme": facts.scheme,
            "host": facts.host,
            "path": facts.path,
            "path_segments": segments,
            "query": parsed_query,
            "headers": headers,
            "protocol": facts.protocol,
        },
        "source": {
            "address": facts.source_address,
            "port": facts.source_port,
            "principal": facts.principal or None,
            "certificate_present": facts.certificate_present,
        },
        "identity": identity.as_input(),
        "tenant": {
            "id": identity.tenant,
            "tier": tenant.tenant.tier if tenant else None,
            "known": tenant is not None,
            "hint": facts.headers.get(TENANT_HINT_HEADER),
        },
        "model": {
            "name": model_name,
            "operation": route.operation if route else None,
            "family": route.family if route else None,
            "source": (route.model_source if route else None) if model_name else None,
            "version": route.version if route else None,
        },
        "payload": {
            "bytes": payload.bytes,
            "content_type": payload.content_type,
            "parsed": payload.parsed,
            "truncated": payload.truncated,
            "stream": payload.stream,
            "max_tokens": payload.max_tokens,
            "messages": payload.messages,
            "roles": payload.roles,
            "prompt_chars": payload.prompt_chars,
            "estimated_tokens": payload.estimated_tokens,
            "tools": payload.tools,
            "has_images": payload.has_images,
            "error": payload.error,
            "error_detail": payload.error_detail,
        },
        "quota": quota.as_input() if quota is not None else None,
        "signals": signals,
        # OPA-Envoy's fields, so OPA-Envoy policies run unchanged.
        "attributes": attributes_document(facts, raw_credentials),
        "parsed_path": opa_envoy_parsed_path(facts.path),
        "parsed_query": parsed_query,
        "parsed_body": payload.body,
        "truncated_body": payload.truncated or body_cut_short(facts),
        "version": {"encoding": "protojson", "ext_authz": "v3"},
    }


def _peer(peer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sock = peer.address.socket_address
    if sock.address:
        out["address"] = {"socketAddress": {"address": sock.address, "portValue": sock.port_value}}
    if peer.principal:
        out["principal"] = peer.principal
    if peer.service:
        out["service"] = peer.service
    if peer.labels:
        out["labels"] = dict(peer.labels)
    return out


def opa_envoy_parsed_path(path: str) -> list[str]:
    """OPA-Envoy's parsed_path: the percent-decoded path without its leading slashes, split on '/'
    (empty segments kept: `/people/` is ["people", ""], `/` is [""])."""
    return unquote(path).lstrip("/").split("/")


def attributes_document(facts: RequestFacts, raw_credentials: bool = False) -> dict[str, Any]:
    """CheckRequest.attributes in protojson names (as OPA-Envoy passes them), credentials redacted
    unless `raw_credentials`.

    Built field by field rather than with MessageToDict: it is on every check, and the certificate
    and raw credentials must not be copied in the first place.
    """
    attrs = facts.attributes
    http = attrs.request.http
    headers = {k: (redact_credential(k, v) if is_credential_header(k) and not raw_credentials else v)
               for k, v in facts.headers.items()}
    if ":path" in headers:
        headers[":path"] = facts.path + ("?" + facts.query if facts.query else "")
    http_doc: dict[str, Any] = {"headers": headers}
    path = facts.path + ("?" + facts.query if facts.query else "") if http.path else ""
    for name, value in (("id", http.id), ("method", http.method), ("path", path),
                        ("host", http.host), ("scheme", http.scheme), ("query", redact_query(http.query)),
                        ("fragment", http.fragment), ("protocol", http.protocol)):
        if value:
            http_doc[name] = value
    if http.size:
        http_doc["size"] = str(http.size)  # int64 is a string in protojson
    if facts.body:
        try:
            http_doc["body"] = facts.body.decode("utf-8")
        except UnicodeDecodeError:
            pass
    request: dict[str, Any] = {"http": http_doc}
    if attrs.request.HasField("time"):
        request["time"] = rfc3339(facts)
    doc: dict[str, Any] = {"request": request, "source": _peer(attrs.source),
                           "destination": _peer(attrs.destination)}
    if attrs.context_extensions:
        doc["contextExtensions"] = dict(attrs.context_extensions)
    if attrs.metadata_context.filter_metadata:
        doc["metadataContext"] = MessageToDict(attrs.metadata_context)
        # jwt_authn's payload holds every claim: the policy sees only input.identity's allow-listed ones.
        filters = doc["metadataContext"].get("filterMetadata", {})
        if JWT_AUTHN_NAMESPACE in filters:
            filters[JWT_AUTHN_NAMESPACE] = REDACTED
    if attrs.route_metadata_context.filter_metadata:
        doc["routeMetadataContext"] = MessageToDict(attrs.route_metadata_context)
    return doc


# ---- the schema, field by field -------------------------------------------------------------

class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Doc):
    id: str = Field(description="Envoy's request id (x-request-id)")
    time: str = Field(description="when Envoy received the request, RFC 3339 UTC; policies read 'now' from here so replay is exact")
    method: str = Field(description="HTTP method, upper case")
    scheme: str
    host: str
    path: str = Field(description="path without the query string")
    path_segments: list[str] = Field(description="path split on '/', percent-decoded")
    query: dict[str, list[str]] = Field(description="query parameters, each with all its values")
    headers: dict[str, str] = Field(description="lower-case names, no pseudo-headers; credential values are redacted keeping their scheme ('Bearer [redacted]', else '[redacted]') unless raw_credentials is on")
    protocol: str = Field(description="e.g. HTTP/1.1, HTTP/2")


class SourceInput(_Doc):
    address: str | None = Field(description="the peer address Envoy reports (not x-forwarded-for); null when not an IP")
    port: int
    principal: str | None = Field(description="the peer certificate's URI SAN (SPIFFE ID) as Envoy reports it")
    certificate_present: bool


class IdentityInput(_Doc):
    authenticated: bool = Field(description="true only when the service verified a credential")
    method: str = Field(description="jwt | api_key | mtls | none: the credential used (or tried, when it failed)")
    subject: str | None
    issuer: str | None
    tenant: str | None = Field(description="the tenant the credential is bound to")
    scopes: list[str]
    key_id: str | None
    claims: dict[str, Any] = Field(description="non-secret claims only (an allow-list per issuer)")
    error: str | None = Field(description="missing_credential | invalid_credential")
    error_description: str | None = Field(description="why, in words safe to show the client")


class TenantInput(_Doc):
    id: str | None
    tier: str | None
    known: bool = Field(description="a tenant file with this id is loaded (it is under data.tenants[id])")
    hint: str | None = Field(description="the client's x-tenant-id header, if any; never trusted as identity")


class ModelInput(_Doc):
    name: str | None
    operation: str | None = Field(description="chat | completions | embeddings | images | audio | moderations | responses | predict | infer | generate, or a read-only GET: list_models | model_metadata | server_metadata; null when the route names none")
    family: str | None = Field(description="openai | anthropic | kserve | tfserving | gemini")
    source: str | None = Field(description="path | body")
    version: str | None


class PayloadInput(_Doc):
    bytes: int = Field(description="body size: content-length when given, else the bytes received (plus one when the body was cut short: it was at least that long)")
    content_type: str
    parsed: bool = Field(description="the body was parsed as JSON")
    truncated: bool = Field(description="Envoy sent only the first part of the body: its facts are unknown, and the default policy answers 413 on every route")
    stream: bool
    max_tokens: int | None = Field(description="the largest output-token limit any field of the body sets (every spelling the API families accept, keys compared case-insensitively), times n/best_of/candidateCount; null when none is set. See docs/payload-fields.md")
    messages: int = Field(description="number of messages (or Gemini contents)")
    roles: list[str]
    prompt_chars: int
    estimated_tokens: int = Field(description="prompt_chars/4 rounded up, plus max_tokens")
    tools: list[str] = Field(description="names of the tools offered to the model")
    has_images: bool
    error: str | None = Field(description="why the body was refused: malformed_json, duplicate_key (also keys differing only in case), too_deep, number_out_of_range (beyond 64 bits), invalid_utf8, invalid_unicode (lone surrogate escape), unsupported_content_type, invalid_field, missing_model, missing_body, model_mismatch, malformed_multipart, duplicate_field, ambiguous_field, too_many_parts, body_not_read (an unauthenticated caller's large body)")
    error_detail: str | None


class BucketInput(_Doc):
    tier: str = Field(description="tenant | credential | model: whose bucket (limits:, credentials.api_keys[].limits, models.<name>.limits)")
    name: str = Field(description="the tenant id, API key id or model name")
    unit: str = Field(description="requests | tokens")
    per_minute: int = Field(description="the refill rate")
    burst: int = Field(description="the most the bucket holds")
    available: int = Field(description="what the bucket held before this request (rounded down)")
    cost: int = Field(description="what this request takes: 1 request, or its estimated tokens (bounded)")
    remaining: int = Field(description="what is left once this request is counted (its cost is given back if it is denied)")
    reset_seconds: int = Field(description="until the bucket is full again")


class QuotaInput(_Doc):
    exceeded: bool = Field(description="some bucket lacks room for this request's cost (nothing was taken from any)")
    buckets: list[BucketInput] = Field(description="every bucket this request draws from; empty when the tenant sets no rate")


class NetworkInput(_Doc):
    prefix: str = Field(description="the network requests are grouped by: /24 (IPv4), /48 (IPv6), or an operator-labelled CIDR")
    kind: str = Field(description="public | private | loopback | link_local | reserved | labelled | unknown")
    country: str | None = Field(description="ISO 3166-1 alpha-2 (public addresses: RIR delegation data; labelled: the label's)")
    asn: str | None = Field(description="the autonomous system, when a label names one")
    label: str | None = Field(description="the operator's name for a labelled network")


class LastUseInput(NetworkInput):
    seconds_ago: float = Field(description="since the credential's previous use, from that network")


class RecentInput(_Doc):
    window_seconds: int
    networks: int = Field(description="distinct networks the credential was used from in the window, this one included")
    countries: list[str] = Field(description="their countries, this one included")
    asns: list[str]


class SignalNetworkInput(NetworkInput):
    seen_before: bool = Field(description="the credential was used from this network within the recent window")
    last: LastUseInput | None = Field(description="the credential's previous use (any decision); null for its first")
    recent: RecentInput


class ConcurrencyInput(_Doc):
    window_seconds: int
    networks: int = Field(description="distinct networks using the credential within the window, this one included")


class VolumeInput(_Doc):
    value: float = Field(description="this request's value (per-minute ones: this minute so far, this request included)")
    typical: float | None = Field(description="the credential's usual value (geometric mean of allowed requests)")
    spread: float = Field(description="the usual spread of ln(1+value), at least 0.25")
    z: float | None = Field(description="(ln(1+value) - ln(1+typical)) / spread, 0 when below typical; null until established")
    observed: int
    established: bool


class BaselineInput(_Doc):
    established: bool = Field(description="false: no baseline yet (fewer than min_observed allowed requests)")
    observed: int
    min_observed: int
    score: float = Field(description="the largest z over the established volumes")
    score_feature: str | None = Field(description="the volume that gave the score")
    features: dict[str, VolumeInput] = Field(description="tokens_per_request, body_bytes, requests_per_minute, tokens_per_minute")
    model_share: float | None = Field(description="share of past requests with this model and operation")
    hour_share: float | None = Field(description="share of past requests in this hour of day (UTC)")


class SignalsInput(_Doc):
    credential: str = Field(description="which credential's history: api_key:<id>, jwt:<issuer>#<subject> or mtls:<id>")
    network: SignalNetworkInput
    concurrency: ConcurrencyInput
    baseline: BaselineInput


class InputV1(_Doc):
    """The OPA input document llm-authz builds for every check."""

    schema_: str = Field(alias="schema", description=f"always {SCHEMA!r}")
    request: RequestInput
    source: SourceInput
    identity: IdentityInput
    tenant: TenantInput
    model: ModelInput
    payload: PayloadInput
    quota: QuotaInput | None = Field(description="the request's token buckets as they were before this decision; null when quotas are off or the caller is not bound to a known tenant")
    signals: SignalsInput | None = Field(default=None, description="the credential's behaviour before this request, compared with it; null unless the tenant file sets `signals:`")
    attributes: dict[str, Any] = Field(description="Envoy's CheckRequest.attributes in protojson names, credentials redacted")
    parsed_path: list[str] = Field(description="OPA-Envoy's: the decoded path split on '/', leading slashes dropped, empty segments kept")
    parsed_query: dict[str, list[str]]
    parsed_body: Any = Field(description="the JSON body on any route (content-type application/json or +json), when it parsed and was not cut short; never in the audit log")
    truncated_body: bool
    version: dict[str, str]


def json_schema() -> dict[str, Any]:
    schema = InputV1.model_json_schema(by_alias=True)
    schema["$id"] = "https://llm-authz.dev/schemas/input-v1.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
