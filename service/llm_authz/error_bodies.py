"""Deny bodies in each API family's own error shape, so each official SDK raises its own typed error.

A client written against OpenAI, Anthropic or Gemini branches on that API's error fields
(`error.code`, `error.type`, `error.status`); KServe v2 and TF Serving clients read a string
`error`. The family comes from the route (facts/routes.py); a request that names no route is
answered in the shape its path and headers speak. Whatever the shape, the reason code and the
decision id are also in the `x-llm-authz-reason` and `x-llm-authz-decision-id` headers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

REASON_HEADER = "x-llm-authz-reason"
DEFAULT_FAMILY = "openai"
# ErrorInfo.domain: "the registered service name of the tool or product that generates the error".
GOOGLE_ERROR_DOMAIN = "llm-authz"
GOOGLE_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

_OPENAI_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                413: "invalid_request_error", 429: "rate_limit_error",
                500: "server_error"}

# Anthropic: "400 invalid_request_error … We may also use this error type for other 4XX status
# codes not listed below", 5xx → api_error, 529 → overloaded_error.
_ANTHROPIC_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                   500: "api_error", 529: "overloaded_error"}

# google.rpc.Code names by HTTP status, as Google APIs map them (google/rpc/code.proto). A
# request body over the limit is INVALID_ARGUMENT, as Gemini itself answers it.
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 409: "ABORTED", 412: "FAILED_PRECONDITION", 413: "INVALID_ARGUMENT",
                  429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
                  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def openai_body(status: int, reason: str, message: str, decision_id: str) -> dict[str, Any]:
    return {"error": {"type": _OPENAI_TYPE.get(status, "permission_error"), "code": reason,
                      "message": message, "param": None, "decision_id": decision_id}}


def anthropic_type(status: int) -> str:
    if status in _ANTHROPIC_TYPE:
        return _ANTHROPIC_TYPE[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_body(status: int, reason: str, message: str, decision_id: str) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message", "details"}, "request_id"}`. The SDK reads
    `error.details.error_code` as "a stable code that names the cause": the reason goes there,
    and the decision id is this answer's request id."""
    return {"type": "error",
            "error": {"type": anthropic_type(status), "message": message,
                      "details": {"error_code": reason, "decision_id": decision_id}},
            "request_id": decision_id}


def google_status(status: int) -> str:
    return _GOOGLE_STATUS.get(status, "UNKNOWN")


def google_body(status: int, reason: str, message: str, decision_id: str) -> dict[str, Any]:
    """google.rpc.Status as Google's HTTP APIs send it (AIP-193): the HTTP code, the canonical
    status name, and an ErrorInfo whose reason is UPPER_SNAKE_CASE and metadata lowerCamelCase."""
    return {"error": {"code": status, "message": message, "status": google_status(status),
                      "details": [{"@type": GOOGLE_ERROR_INFO, "reason": reason.upper()[:63],
                                   "domain": GOOGLE_ERROR_DOMAIN,
                                   "metadata": {"reason": reason, "decisionId": decision_id}}]}}


def plain_body(status: int, reason: str, message: str, decision_id: str) -> dict[str, Any]:
    """KServe v2 (Open Inference Protocol) and TF Serving REST: `{"error": "<string>"}`, no room
    for more; the reason and decision id are in the headers."""
    return {"error": message}


_SHAPES: dict[str, Callable[[int, str, str, str], dict[str, Any]]] = {
    "openai": openai_body,
    "anthropic": anthropic_body,
    "gemini": google_body,
    "kserve": plain_body,
    "tfserving": plain_body,
}
FAMILIES = frozenset(_SHAPES)


def _text(value: str) -> str:
    """Text JSON can carry: a lone surrogate (a JSON escape can make one) becomes '?'."""
    return value.encode("utf-8", "replace").decode("utf-8")


def render(family: str | None, status: int, reason: str, message: str, decision_id: str) -> bytes:
    """The deny body for `family` (OpenAI's shape when the family is unknown). Never raises."""
    shape = _SHAPES.get(family or DEFAULT_FAMILY, openai_body)
    return orjson.dumps(shape(status, _text(reason), _text(message), decision_id))


def reason_header(reason: str) -> str:
    """`x-llm-authz-reason`'s value: a policy's own reason may hold anything, a header value may
    not (Envoy refuses control characters); printable ASCII only, at most 128 characters."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in reason[:128]).strip()
    return cleaned or "policy_denied"
