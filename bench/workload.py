"""The request every benchmark sends: an OpenAI chat call with a ~1 KB JSON body, as Envoy sees it."""

from __future__ import annotations

import json
import time
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2

DEMO_API_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"  # tenants/acme.yaml, ak_acme_1
PATH = "/v1/chat/completions"


def chat_body(size: int = 1024) -> bytes:
    """A chat completion request padded to about `size` bytes with a realistic prompt."""
    messages = [
        {"role": "system", "content": "Answer questions from the finance team briefly."},
        {"role": "user", "content": ""},
    ]
    body: dict[str, Any] = {"model": "gpt-4o", "messages": messages, "max_tokens": 256, "temperature": 0.2}
    filler = "Summarise the quarterly figures for the board, highlighting risks and cash flow. "
    while len(json.dumps(body)) < size:
        messages[1]["content"] += filler
    return json.dumps(body).encode()


def http_headers(token: str, body: bytes) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "user-agent": "bench/1.0",
        "accept": "application/json",
    }


def check_request(token: str = DEMO_API_KEY, body: bytes | None = None) -> external_auth_pb2.CheckRequest:
    """A CheckRequest shaped like the one Envoy's ext_authz filter sends (pack_as_bytes, peer addresses)."""
    body = chat_body() if body is None else body
    req = external_auth_pb2.CheckRequest()
    attrs = req.attributes
    attrs.source.address.socket_address.address = "127.0.0.1"
    attrs.source.address.socket_address.port_value = 51234
    attrs.destination.address.socket_address.address = "127.0.0.1"
    attrs.destination.address.socket_address.port_value = 10000
    attrs.request.time.FromNanoseconds(time.time_ns())
    http = attrs.request.http
    http.id = "4f1e2d3c-0000-4000-8000-123456789abc"
    http.method = "POST"
    http.path = PATH
    http.host = "127.0.0.1:10000"
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    http.size = len(body)
    headers = {":authority": http.host, ":method": "POST", ":path": PATH, ":scheme": "http",
               "x-forwarded-proto": "http", "x-request-id": http.id,
               "x-envoy-expected-rq-timeout-ms": "300000", **http_headers(token, body)}
    for k, v in headers.items():
        http.headers[k] = v
    http.raw_body = body
    return req
