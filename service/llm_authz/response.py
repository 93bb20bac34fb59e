"""Decision → CheckResponse: what Envoy forwards upstream on allow, what the client reads on deny."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from llm_authz import error_bodies
from llm_authz.decision import POLICY_DENIED, Decision
from llm_authz.facts.request import is_credential_header, is_reserved_header
from llm_authz.opa_envoy_result import split_first as _split_first

HEADER_PREFIX = "x-llm-authz-"
TENANT_HEADER = "x-llm-authz-tenant"
FLAGS_HEADER = "x-llm-authz-flags"
SUBJECT_HEADER = "x-llm-authz-subject"
DECISION_HEADER = "x-llm-authz-decision-id"
REALM = "llm-authz"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
_STATUS_OK = status_pb2.Status(code=code_pb2.OK)

@dataclass(slots=True)
class CheckContext:
    """What the answer needs besides the decision. All of it is safe to show the client."""

    decision_id: str
    request_headers: dict[str, str]
    tenant: str | None = None
    tier: str | None = None
    subject: str | None = None
    model: str | None = None
    operation: str | None = None
    identity_error: str | None = None
    payload_error: str | None = None
    missing_scopes: tuple[str, ...] = ()
    max_body_bytes: int | None = None
    max_tokens_limit: int | None = None
    max_tokens: int | None = None
    retry_after_seconds: int | None = None
    ratelimit_headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, on allow and on 429
    family: str | None = None  # the API the client speaks: picks the shape of the error body


def _clip(value: str | None, limit: int = 80) -> str:
    value = value or ""
    return value if len(value) <= limit else value[:limit] + "…"


def error_message(code: str, ctx: CheckContext) -> str:
    """A message that helps the caller and echoes no secret: only names the caller sent or may know."""
    match code:
        case "missing_credential":
            return "No credential was presented: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
        case "invalid_credential":
            return f"The credential was rejected: {ctx.identity_error or 'it is not valid'}."
        case "tenant_mismatch":
            return "The tenant named in x-tenant-id is not the tenant of the credential, or that tenant is unknown."
        case "network_not_allowed":
            return "Requests from this network address are not allowed for this tenant."
        case "bad_request":
            return f"The request is malformed: {ctx.payload_error or 'the body could not be read'}."
        case "payload_too_large":
            limit = f" of {ctx.max_body_bytes} bytes" if ctx.max_body_bytes is not None else ""
            return f"The request body is larger than this tenant's limit{limit}, or was cut short."
        case "route_not_allowed":
            return "This method and path name no model operation that can be authorized."
        case "insufficient_scope":
            return f"The credential lacks the required scope(s): {' '.join(ctx.missing_scopes) or 'unknown'}."
        case "model_not_allowed":
            return f"The model '{_clip(ctx.model)}' is not available to this tenant."
        case "operation_not_allowed":
            return f"The operation '{ctx.operation}' is not allowed on model '{_clip(ctx.model)}' for this tenant."
        case "max_tokens_exceeded":
            return f"max_tokens {ctx.max_tokens} is above this tenant's limit of {ctx.max_tokens_limit}."
        case "credential_anomaly":
            return "This use of the credential is unlike its usual use (network, place or volume); ask its owner or administrator."
        case "rate_limited":
            return "The tenant's request or token quota is spent; retry later."
        case "policy_error":
            return "The request could not be authorized because of an internal policy error."
        case _:
            return "The request was denied by policy."


def _add_headers(field: Any, items: Any, action: int = _OVERWRITE) -> None:
    """Append (name, value) pairs to a repeated HeaderValueOption field in place: filling the
    messages the field creates costs a third of building each one and copying it in."""
    add = field.add
    for name, value in items:
        option = add()
        option.header.key = name
        option.header.value = value
        option.append_action = action


def _appended(lines: list[tuple[str, str]], exclude: Container[str]) -> list[tuple[str, str]]:
    """Further values of a header the policy gave several (OPA-Envoy's array values), after the first."""
    return [(k, v) for k, v in lines if k not in exclude]


def _metadata(decision: Decision, ctx: CheckContext) -> struct_pb2.Struct:
    meta = struct_pb2.Struct()
    values: dict[str, Any] = {"decision_id": ctx.decision_id, "tenant": ctx.tenant or "", "tier": ctx.tier or "",
                              "model": ctx.model or "", "allowed": decision.allow, "status": decision.status}
    if decision.flags:
        values["flags"] = ",".join(decision.flags)
    values.update(decision.dynamic_metadata)
    meta.update(values)
    return meta


def www_authenticate(decision: Decision, ctx: CheckContext) -> str | None:
    if decision.status == 401:
        if decision.code == "missing_credential":
            return f'Bearer realm="{REALM}"'
        desc = (ctx.identity_error or "invalid credential").replace('"', "'").replace("\\", "")
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{desc}"'
    if decision.code == "insufficient_scope":
        return f'Bearer realm="{REALM}", error="insufficient_scope", scope="{" ".join(ctx.missing_scopes)}"'
    return None


def error_body(decision: Decision, ctx: CheckContext) -> bytes:
    """The deny body in the error shape of the API the client speaks (error_bodies.py)."""
    code = decision.code or POLICY_DENIED
    return error_bodies.render(ctx.family, decision.status, code, decision.message or error_message(code, ctx),
                               ctx.decision_id)


def to_check_response(decision: Decision, ctx: CheckContext) -> external_auth_pb2.CheckResponse:
    if decision.allow:
        return _allow(decision, ctx)
    return _deny(decision, ctx)


def _allow(decision: Decision, ctx: CheckContext) -> external_auth_pb2.CheckResponse:
    ours = {TENANT_HEADER: ctx.tenant or "", SUBJECT_HEADER: ctx.subject or "", DECISION_HEADER: ctx.decision_id}
    if decision.flags:
        ours[FLAGS_HEADER] = ",".join(decision.flags)
    to_upstream = {**decision.headers, **ours}  # the policy cannot overwrite the identity headers
    # Client-sent x-llm-authz-* headers and credentials never reach the model server, in any
    # spelling a CGI/WSGI upstream folds to theirs (x_llm_authz_tenant is x-llm-authz-tenant there).
    # (A header the policy sets for the upstream replaces the client's: it is not also removed.)
    remove = [h for h in ctx.request_headers
              if (is_reserved_header(h) or is_credential_header(h)) and h not in to_upstream]
    remove.extend(h for h in decision.headers_to_remove if h not in to_upstream and h not in remove)
    to_client = {**ctx.ratelimit_headers, **decision.response_headers, DECISION_HEADER: ctx.decision_id}
    response = external_auth_pb2.CheckResponse(status=_STATUS_OK, dynamic_metadata=_metadata(decision, ctx))
    ok = response.ok_response
    _add_headers(ok.headers, to_upstream.items())
    _add_headers(ok.headers, _appended(decision.extra_headers, ours), _APPEND)
    ok.headers_to_remove.extend(remove)
    _add_headers(ok.response_headers_to_add, to_client.items())
    _add_headers(ok.response_headers_to_add, _appended(decision.extra_response_headers, (DECISION_HEADER,)), _APPEND)
    if decision.query_to_set or decision.query_to_remove:
        ok.query_parameters_to_set.extend(base_pb2.QueryParameter(key=k, value=v) for k, v in decision.query_to_set)
        ok.query_parameters_to_remove.extend(decision.query_to_remove)
    else:
        ok.SetInParent()  # an allow with nothing to change still answers with an ok_response
    return response


def _deny(decision: Decision, ctx: CheckContext) -> external_auth_pb2.CheckResponse:
    headers = dict(decision.response_headers)
    headers[DECISION_HEADER] = ctx.decision_id
    headers[error_bodies.REASON_HEADER] = error_bodies.reason_header(decision.code or POLICY_DENIED)
    if decision.body is None:
        headers["content-type"] = "application/json"
    if (auth := www_authenticate(decision, ctx)) is not None:
        headers["www-authenticate"] = auth
    if decision.status == 429:
        headers = {**ctx.ratelimit_headers, **headers}
        headers.setdefault("retry-after", str(ctx.retry_after_seconds or 60))
    body = decision.body if decision.body is not None else error_body(decision, ctx).decode()
    # OPA-Envoy's `headers` on a deny go to the client, every value of each; the policy's replace
    # ours (it answers as it chooses), except the decision id.
    first, more = _split_first([(k, v) for k, v in decision.deny_headers if k != DECISION_HEADER])
    headers.update(first)
    rpc_code = code_pb2.UNAUTHENTICATED if decision.status == 401 else code_pb2.PERMISSION_DENIED
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=rpc_code, message=decision.code or POLICY_DENIED),
        dynamic_metadata=_metadata(decision, ctx),
    )
    denied = response.denied_response
    _add_headers(denied.headers, headers.items())
    _add_headers(denied.headers, more, _APPEND)
    denied.body = body
    denied.status.code = decision.status  # type.v3.StatusCode values are the HTTP codes
    return response
