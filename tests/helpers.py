"""Building CheckRequests the way Envoy sends them, for unit tests of the pure steps."""

from __future__ import annotations

from typing import Any

import orjson
from envoy.service.auth.v3 import external_auth_pb2


def check_request(path: str = "/v1/chat/completions", method: str = "POST", headers: dict[str, str] | None = None,
                  body: bytes | Any = b"", source: str = "10.0.0.7", principal: str = "",
                  request_id: str = "req-1") -> external_auth_pb2.CheckRequest:
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.id = request_id
    http.method = method
    http.path = path
    http.host = "api.example"
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    all_headers = {":method": method, ":path": path, ":authority": "api.example", "x-request-id": request_id}
    if body:
        all_headers["content-type"] = "application/json"
        all_headers["content-length"] = str(len(body))
    all_headers.update(headers or {})
    for k, v in all_headers.items():
        if v is not None:
            http.headers[k] = v
    http.raw_body = body
    http.size = len(body)
    req.attributes.source.address.socket_address.address = source
    req.attributes.source.address.socket_address.port_value = 40000
    if principal:
        req.attributes.source.principal = principal
    req.attributes.request.time.GetCurrentTime()
    return req


def first_answer_fails(monkeypatch: Any) -> None:
    """The Checker's first CheckResponse cannot be built (a header Envoy's protos cannot carry, say);
    every later one, the check's own 500 included, is built as usual."""
    import llm_authz.check as check_module

    real = check_module.to_check_response
    calls: list[Any] = []

    def fails_once(decision: Any, ctx: Any) -> Any:
        calls.append(decision)
        if len(calls) == 1:
            raise ValueError("a header Envoy's protos cannot carry")
        return real(decision, ctx)

    monkeypatch.setattr(check_module, "to_check_response", fails_once)
