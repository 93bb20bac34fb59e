"""A small OpenAI-compatible model server for demos and tests.

It answers chat, completions, embeddings and the other routes with canned results, and shows
which request headers it received (so you can see what llm-authz added and removed).
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-model-server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

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
        out = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_POST = _answer  # noqa: N815
    do_GET = _answer  # noqa: N815


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
