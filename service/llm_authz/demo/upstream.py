"""A small OpenAI-compatible model server for demos and tests.

It answers chat, completions, embeddings and the other routes with canned results, and shows
which request headers it received (so you can see what llm-authz added and removed). It also
answers the read-only routes SDKs call (list the models, read one model, KServe's health) in each
API's own shape, listing only the models llm-authz names in `x-llm-authz-models` when it does.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CATALOGUE = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-1.5-pro", "llama-3-8b")
MODELS_HEADER = "x-llm-authz-models"
_CREATED = 1_700_000_000
_V1_MODEL = re.compile(r"^/v1/models/([^/]+)$")
_GEMINI_MODEL = re.compile(r"^/v1(?:beta)?/models/([^/:]+)$")
_KSERVE_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready)?$")
_TFSERVING_MODEL = re.compile(r"^/v1/models/([^/]+)(?:/versions/([^/]+)|/labels/([^/]+))?(/metadata)?$")


def _openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "demo"}


def _anthropic_model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}


def _gemini_model(name: str) -> dict[str, Any]:
    return {"name": f"models/{name}", "version": "001", "displayName": name,
            "inputTokenLimit": 1048576, "outputTokenLimit": 8192,
            "supportedGenerationMethods": ["generateContent", "countTokens"]}


def read_only_answer(path: str, headers: dict[str, str]) -> tuple[int, Any] | None:
    """The answer to a GET of a listing, model or health route, in the caller's API's shape."""
    granted = headers.get(MODELS_HEADER)
    models = [m for m in granted.split(",") if m] if granted is not None else list(CATALOGUE)
    anthropic = "anthropic-version" in headers
    google = "x-goog-api-key" in headers or "x-goog-api-client" in headers or path.startswith("/v1beta/")
    if path in ("/v1/models", "/v1beta/models"):
        if anthropic:
            return 200, {"data": [_anthropic_model(m) for m in models], "has_more": False,
                         "first_id": models[0] if models else None, "last_id": models[-1] if models else None}
        if google:
            return 200, {"models": [_gemini_model(m) for m in models]}
        return 200, {"object": "list", "data": [_openai_model(m) for m in models]}
    if google and (m := _GEMINI_MODEL.match(path)):
        return 200, _gemini_model(m[1])
    if (m := _V1_MODEL.match(path)) and not google:
        return 200, _anthropic_model(m[1]) if anthropic else _openai_model(m[1])
    if m := _TFSERVING_MODEL.match(path):
        if m[4]:
            return 200, {"model_spec": {"name": m[1], "version": m[2] or "1", "signature_name": ""},
                         "metadata": {"signature_def": {"signature_def": {}}}}
        return 200, {"model_version_status": [{"version": m[2] or "1", "state": "AVAILABLE",
                                               "status": {"error_code": "OK", "error_message": ""}}]}
    if m := _KSERVE_MODEL.match(path):
        if m[3]:
            return 200, None
        return 200, {"name": m[1], "versions": [m[2] or "1"], "platform": "demo",
                     "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}],
                     "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1, 1]}]}
    if path == "/v2":
        return 200, {"name": "demo-model-server", "version": "2", "extensions": []}
    if path in ("/v2/health/live", "/v2/health/ready"):
        return 200, None
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-model-server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, result: Any) -> None:
        out = json.dumps(result).encode() if result is not None else b""
        self.send_response(status)
        if result is not None:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        answer = read_only_answer(path, {k.lower(): v for k, v in self.headers.items()})
        if answer is None:
            self._answer()
        else:
            self._send(*answer)

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        model = body.get("model") if isinstance(body, dict) else None
        path = self.path.split("?", 1)[0]
        if path.endswith("/embeddings"):
            result = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}], "model": model}
        elif path.endswith("/chat/completions") or path == "/v1/messages":
            result = {"id": "chatcmpl-demo", "object": "chat.completion", "created": int(time.time()), "model": model,
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": "Hello from the demo model server."}}]}
        else:
            result = {"object": "demo.result", "model": model, "path": path}
        result["query"] = self.path.partition("?")[2]
        result["received_headers"] = {k.lower(): ", ".join(self.headers.get_all(k) or []) for k in self.headers.keys()}
        self._send(200, result)

    do_POST = _answer  # noqa: N815


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Demo OpenAI-compatible model server")
    parser.add_argument("--listen", default="127.0.0.1:8000")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    make_server(host, int(port)).serve_forever()


if __name__ == "__main__":
    main()
