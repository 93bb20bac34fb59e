"""STAND-IN for an OPA server: OPA's REST Data and Policy API, answered by the embedded OPA engine.

No OPA binary can be installed here, so the `opa` engine's HTTP client is tested against this
stand-in. It implements what llm-authz uses: POST /v1/data/{path} (with strict builtin errors,
and `{}` for an undefined document, as OPA answers), PUT /v1/policies/{id} and PUT /v1/data
(only used with --opa-push), and records every request that would write, so a test can show
that none reaches an OPA that manages its policies from bundles. It speaks HTTP/1.1 with
keep-alive, as OPA does, and counts the connections it accepted.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llm_authz.engine.base import UNDEFINED
from llm_authz.engine.embedded import EmbeddedEngine
from llm_authz.errors import LlmAuthzError


class OpaStandIn:
    def __init__(self, modules: dict[str, str] | None = None, data: Any = None) -> None:
        """With modules and data: an OPA whose policies came from a bundle (writes are refused, 403)."""
        self.modules: dict[str, str] = dict(modules or {})
        self.data: Any = data or {}
        self.bundle_managed = modules is not None
        self.engine: EmbeddedEngine | None = None
        self.requests = 0
        self.writes: list[str] = []  # "PUT /v1/data", ... every write attempted
        self.connections = 0
        self._sockets: list[Any] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as OPA (Go) does: no 40 ms delayed-ACK stalls

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer.connections += 1
                    outer._sockets.append(self.connection)

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict | None) -> None:
                raw = b"" if status == 204 else json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _write(self) -> None:
                path = self.path.split("?")[0]
                body = self._body()
                outer.writes.append(f"{self.command} {path}")
                if outer.bundle_managed:
                    # OPA refuses writes under a bundle's roots; with roots [""] that is everything.
                    return self._reply(403, {"code": "invalid_parameter",
                                             "message": "path is owned by bundle"})
                if self.command == "PUT" and path.startswith("/v1/policies/"):
                    outer.modules[path[len("/v1/policies/"):]] = body.decode()
                elif self.command == "PUT" and path == "/v1/data":
                    outer.data = json.loads(body)
                else:
                    return self._reply(404, {"code": "resource_not_found"})
                outer.engine = None
                if self.command == "PUT" and path == "/v1/data":
                    outer.engine = EmbeddedEngine(outer.modules, outer.data, pool_size=2)  # ready before checks
                self._reply(200 if path.startswith("/v1/policies/") else 204, {})

            do_PUT = do_PATCH = do_DELETE = _write  # noqa: N815

            def do_POST(self) -> None:  # noqa: N802
                with outer._lock:
                    outer.requests += 1
                path, _, _query = self.path.partition("?")
                doc = path[len("/v1/data/"):].replace("/", ".")
                try:
                    with outer._lock:
                        if outer.engine is None:
                            outer.engine = EmbeddedEngine(outer.modules, outer.data, pool_size=2)
                        engine = outer.engine
                    value = engine.evaluate(f"data.{doc}", json.loads(self._body()).get("input"))
                except LlmAuthzError as exc:
                    return self._reply(500, {"code": "internal_error", "message": str(exc)})
                self._reply(200, {} if value is UNDEFINED else {"result": value})

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # many check threads connect at once

        if self.bundle_managed:  # compiled before the first query, as OPA activates a bundle
            self.engine = EmbeddedEngine(self.modules, self.data, pool_size=2)
        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop as a crashed OPA would: no new connections, and the open ones cut."""
        import socket

        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
