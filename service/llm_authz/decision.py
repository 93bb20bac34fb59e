"""Policy result → Decision. Accepts the llm-authz object, OPA-Envoy's object and a plain boolean.

The status and `error.code` come from the first failing row of the contract's table; a result
of any other shape is a policy error, and a policy error denies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from llm_authz.engine.base import UNDEFINED
from llm_authz.errors import PolicyError

# (reason, status), in the contract's order: the first one present decides status and code.
REASON_TABLE: tuple[tuple[str, int], ...] = (
    ("policy_error", 500),
    ("missing_credential", 401),
    ("invalid_credential", 401),
    ("tenant_mismatch", 403),
    ("network_not_allowed", 403),
    ("bad_request", 400),
    ("payload_too_large", 413),
    ("route_not_allowed", 403),
    ("insufficient_scope", 403),
    ("model_not_allowed", 403),
    ("operation_not_allowed", 403),
    ("max_tokens_exceeded", 403),
    ("credential_anomaly", 403),
    ("rate_limited", 429),
)
REASON_STATUS = dict(REASON_TABLE)
_RANK = {reason: i for i, (reason, _) in enumerate(REASON_TABLE)}
POLICY_DENIED = "policy_denied"


@dataclass(slots=True)
class Decision:
    allow: bool
    status: int = 200
    reasons: list[str] = field(default_factory=list)
    code: str | None = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    headers_to_remove: list[str] = field(default_factory=list)
    obligations: dict[str, Any] = field(default_factory=dict)
    body: str | None = None  # a deny body given by an OPA-Envoy policy, sent as is
    dynamic_metadata: dict[str, Any] = field(default_factory=dict)
    # OPA-Envoy's result object: header lines beyond the first of a name (appended, not replacing),
    # the headers a deny sends the client, and the upstream request's query changes.
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    extra_response_headers: list[tuple[str, str]] = field(default_factory=list)
    deny_headers: list[tuple[str, str]] = field(default_factory=list)
    query_to_set: list[tuple[str, str]] = field(default_factory=list)
    query_to_remove: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # allowed but noted: x-llm-authz-flags upstream
    anomalies: list[str] = field(default_factory=list)  # which credential anomalies the policy found

    @classmethod
    def policy_error(cls) -> "Decision":
        """A deny for a failure. What failed goes to the log and the audit record (`result.error`),
        never to the client."""
        return cls(allow=False, status=500, reasons=["policy_error"], code="policy_error")

    def summary(self) -> dict[str, Any]:
        """allowed, status and reasons: what replay compares."""
        return {"allowed": self.allow, "status": self.status, "reasons": list(self.reasons)}


def unread_body_denied(decision: Decision, route: Any, payload: Any) -> Decision:
    """A JSON body that could not be read on a route that names no model operation is answered 400
    whatever the policy decided: such a policy reads `parsed_body`, which is absent then, and an
    absent value must not read in the caller's favour. OPA-Envoy, too, answers 400 without asking
    the policy. (On model routes the policy sees `input.payload.error` and answers it itself.)"""
    json_body = payload.content_type == "application/json" or payload.content_type.endswith("+json")
    if route is None and payload.error and json_body and decision.code != "bad_request":
        return Decision(allow=False, status=400, reasons=["bad_request"], code="bad_request")
    return decision


def order_reasons(reasons: list[str]) -> list[str]:
    """Known reasons in table order, then any others in the order the policy gave them."""
    unique = list(dict.fromkeys(reasons))
    return sorted(unique, key=lambda r: _RANK.get(r, len(_RANK)))


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PolicyError(f"decision {what} must be an object")
    out = {}
    for k, v in value.items():
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            v = ",".join(v)
        if not isinstance(v, str):
            raise PolicyError(f"decision {what}[{k!r}] must be a string")
        out[k.lower()] = v
    return out


def _status(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise PolicyError("decision status must be an HTTP status code")
    return value


def from_result(result: Any) -> Decision:
    """Normalise what the policy returned. Raises PolicyError for an undefined or ill-shaped result."""
    if result is UNDEFINED:
        raise PolicyError("the policy returned no decision (undefined)")
    if isinstance(result, bool):
        return Decision(allow=True) if result else _deny([POLICY_DENIED], None)
    if not isinstance(result, dict):
        raise PolicyError(f"the decision must be an object or a boolean, got {type(result).__name__}")
    if "allow" in result:
        return _llm_authz_shape(result)
    if "allowed" in result:
        return _opa_envoy_shape(result)
    raise PolicyError("the decision object has neither 'allow' nor 'allowed'")


def _deny(reasons: list[str], status: int | None) -> Decision:
    ordered = order_reasons(reasons) or [POLICY_DENIED]
    code = ordered[0]
    return Decision(allow=False, status=status or REASON_STATUS.get(code, 403), reasons=ordered, code=code)


def _llm_authz_shape(result: dict[str, Any]) -> Decision:
    allow = result["allow"]
    if not isinstance(allow, bool):
        raise PolicyError("decision 'allow' must be a boolean")
    reasons = result.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise PolicyError("decision 'reasons' must be a list of strings")
    obligations = result.get("obligations", {})
    if not isinstance(obligations, dict):
        raise PolicyError("decision 'obligations' must be an object")
    message = result.get("message")
    if message is not None and not isinstance(message, str):
        raise PolicyError("decision 'message' must be a string")
    if allow:
        decision = Decision(allow=True, status=200, reasons=order_reasons(reasons))
    else:
        decision = _deny(reasons, _status(result.get("status"), 0) or None)
        decision.message = message
    decision.headers = _str_map(result.get("headers"), "headers")
    decision.response_headers = _str_map(result.get("response_headers"), "response_headers")
    decision.obligations = obligations
    decision.flags = _names(result.get("flags"), "flags")
    decision.anomalies = _names(result.get("anomalies"), "anomalies")
    return decision


_NAME = re.compile(r"^[a-z0-9_.-]{1,64}$")


def _names(value: Any, what: str) -> list[str]:
    """A list of short names (they become a header value and metric labels)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.match(v) for v in value):
        raise PolicyError(f"decision '{what}' must be a list of names ([a-z0-9_.-], at most 64 characters)")
    return list(dict.fromkeys(value))


def _opa_envoy_shape(result: dict[str, Any]) -> Decision:
    from llm_authz.opa_envoy_result import from_opa_envoy

    return from_opa_envoy(result)
