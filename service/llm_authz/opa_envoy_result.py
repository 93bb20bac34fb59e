"""OPA-Envoy's result object → Decision, with the semantics OPA-Envoy gives each field.

The reference is OPA-Envoy's envoyauth/response.go and the check handler that uses it:

- `allowed` (required boolean) decides.
- `headers`: an object, or an array of objects, whose values are a string or an array of
  strings (one header line per value). Sent upstream when allowed, to the client when denied.
- `response_headers_to_add` (same forms): to the client, on allow only.
- `request_headers_to_remove` (array of strings): removed before the upstream, on allow only.
- `query_parameters_to_set` (object of string or array of strings) and
  `query_parameters_to_remove` (array of strings): applied to the upstream request, on allow only.
- `body` (string) and `http_status` (a status Envoy's StatusCode enum knows; 403 when absent):
  the client's answer, on deny only.
- `dynamic_metadata` (object): on allow and on deny.

A field of the wrong type is an error (OPA-Envoy fails the check; here the check denies with 500),
but only where OPA-Envoy reads it: `body` and `http_status` are not read on allow, nor the
allow-only fields on deny.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from envoy.type.v3 import http_status_pb2

from llm_authz.decision import POLICY_DENIED, Decision
from llm_authz.errors import PolicyError

# What OPA-Envoy accepts as http_status: a code Go's http.StatusText names and Envoy's enum has.
_ENVOY_STATUS = frozenset(http_status_pb2.StatusCode.values()) - {0}
_VALID_STATUS = frozenset(s.value for s in HTTPStatus) & _ENVOY_STATUS
HeaderList = list[tuple[str, str]]


def headers_of(value: Any, field: str) -> HeaderList:
    """An OPA-Envoy header field (object or array of objects) as (name, value) lines, in order."""
    if isinstance(value, dict):
        maps = [value]
    elif isinstance(value, list):
        if not all(isinstance(item, dict) for item in value):
            raise PolicyError(f"decision '{field}' must be an object or an array of objects")
        maps = value
    else:
        raise PolicyError(f"decision '{field}' must be an object or an array of objects")
    lines: HeaderList = []
    for headers in maps:
        for name, item in headers.items():
            if isinstance(item, str):
                lines.append((name.lower(), item))
            elif isinstance(item, list) and all(isinstance(v, str) for v in item):
                lines.extend((name.lower(), v) for v in item)
            else:
                raise PolicyError(f"decision '{field}' header {name!r} must be a string or an array of strings")
    return lines


def _strings(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"decision '{field}' must be an array of strings")
    return value


def _query_to_set(value: Any) -> HeaderList:
    if not isinstance(value, dict):
        raise PolicyError("decision 'query_parameters_to_set' must be an object")
    out: HeaderList = []
    for name, item in value.items():
        if isinstance(item, str):
            out.append((name, item))
        elif isinstance(item, list) and all(isinstance(v, str) for v in item):
            out.extend((name, v) for v in item)
        else:
            raise PolicyError(f"decision 'query_parameters_to_set' {name!r} must be a string or an array of strings")
    return out


def http_status(value: Any) -> int:
    """OPA-Envoy's deny status: 403 when absent, else a status code both Go and Envoy know."""
    if value is None:
        return 403
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in _VALID_STATUS:
        raise PolicyError(f"decision 'http_status' {value!r} is not an HTTP status code Envoy can send")
    return value


def split_first(lines: HeaderList) -> tuple[dict[str, str], HeaderList]:
    """The first value of each header (it replaces the request's) and the further values (appended)."""
    first: dict[str, str] = {}
    more: HeaderList = []
    for name, value in lines:
        if name in first:
            more.append((name, value))
        else:
            first[name] = value
    return first, more


def from_opa_envoy(result: dict[str, Any]) -> Decision:
    """Decision for OPA-Envoy's object (the caller has seen the `allowed` key)."""
    allowed = result["allowed"]
    if not isinstance(allowed, bool):
        raise PolicyError("decision 'allowed' must be a boolean")
    headers = headers_of(result["headers"], "headers") if "headers" in result else []
    meta = result.get("dynamic_metadata", {})
    if not isinstance(meta, dict):
        raise PolicyError("decision 'dynamic_metadata' must be an object")
    if not allowed:
        body = result.get("body")
        if body is not None and not isinstance(body, str):
            raise PolicyError("decision 'body' must be a string")
        status = http_status(result.get("http_status"))
        return Decision(allow=False, status=status, reasons=[POLICY_DENIED], code=POLICY_DENIED, body=body,
                        deny_headers=headers, dynamic_metadata=meta)
    decision = Decision(allow=True, dynamic_metadata=meta)
    decision.headers, decision.extra_headers = split_first(headers)
    if "response_headers_to_add" in result:
        to_add = headers_of(result["response_headers_to_add"], "response_headers_to_add")
        decision.response_headers, decision.extra_response_headers = split_first(to_add)
    if "request_headers_to_remove" in result:
        remove = _strings(result["request_headers_to_remove"], "request_headers_to_remove")
        decision.headers_to_remove = [h.lower() for h in remove]
    if "query_parameters_to_set" in result:
        decision.query_to_set = _query_to_set(result["query_parameters_to_set"])
    if "query_parameters_to_remove" in result:
        decision.query_to_remove = list(_strings(result["query_parameters_to_remove"], "query_parameters_to_remove"))
    return decision
