"""MOCK OPA server: OPA's REST Data and Policy API, answered by the embedded OPA engine.

No OPA binary can be installed here, so the `opa` engine's HTTP client is tested against this
stand-in. It implements only what llm-authz uses: PUT /v1/policies/{id}, PUT /v1/data and
POST /v1/data/{path} with strict builtin errors.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llm_authz.engine.base import UNDEFINED
from llm_authz.engine.embedded import EmbeddedEngine
from llm_authz.errors import LlmAuthzError


class MockOpaServer:
    def __init__(self) -> None:
        self.modules: dict[str, str] = {}
        self.data: dict = {}
        self.engine: EmbeddedEngine | None = None
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict | None) -> None:
                raw = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def do_PUT(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                if path.startswith("/v1/policies/"):
                    outer.modules[path[len("/v1/policies/"):]] = self._body().decode()
                elif path == "/v1/data":
                    outer.data = json.loads(self._body())
                else:
                    return self._reply(404, {"code": "resource_not_found"})
                outer.engine = None
                self._reply(200 if path.startswith("/v1/policies/") else 204, {})

            def do_POST(self) -> None:  # noqa: N802
                outer.requests += 1
                path, _, query = self.path.partition("?")
                doc = path[len("/v1/data/"):].replace("/", ".")
                try:
                    if outer.engine is None:
                        outer.engine = EmbeddedEngine(outer.modules, outer.data)
                    value = outer.engine.evaluate(f"data.{doc}", json.loads(self._body()).get("input"))
                except LlmAuthzError as exc:
                    return self._reply(500, {"code": "internal_error", "message": str(exc)})
                self._reply(200, {} if value is UNDEFINED else {"result": value})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
