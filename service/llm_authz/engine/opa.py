"""The `opa` engine: an OPA server (usually a sidecar) over its REST Data API.

By default it only queries (`POST /v1/data/<entrypoint>`): the OPA server manages its own
policies and data, typically from the same bundle `serve --bundle` loads, and llm-authz never
writes to it. Writing would overwrite what the OPA's bundle manages (OPA refuses writes under a
bundle's roots) and, on a shared OPA, replace other users' data. `--opa-push` keeps the old
behaviour for a private OPA: policies are pushed with PUT /v1/policies and data with PUT
/v1/data at load time, so the server evaluates exactly the revision the service hashed and logs.

The client is httpx with one keep-alive connection pool shared by every check thread; each
check is one POST with no retry (a retry would spend the check's deadline: the check denies
with 500 instead, and the next one tries again). opa-python-client was measured for this path
and not kept: see docs/opa-ecosystem.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from llm_authz.engine.base import UNDEFINED, query_path
from llm_authz.errors import EngineUnavailable, PolicyError, PolicyLoadError

log = logging.getLogger("llm_authz.engine")
_JSON = {"content-type": "application/json"}


class OpaServerEngine:
    name = "opa"

    def __init__(self, url: str, modules: Mapping[str, str], data: Any, timeout: float = 1.0,
                 push: bool = False, max_connections: int = 64):
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout, limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections))
        if push:
            self._push(modules, data)
        else:
            log.info("engine opa: querying %s only (it manages its own policies; --opa-push to push them)", self.url)

    def _push(self, modules: Mapping[str, str], data: Any) -> None:
        try:
            for name, source in modules.items():
                r = self._client.put(f"/v1/policies/{name}", content=source.encode(),
                                     headers={"content-type": "text/plain"})
                if r.status_code != 200:
                    raise PolicyLoadError(f"{name}: {r.text[:500]}")
            r = self._client.put("/v1/data", content=orjson.dumps(data or {}), headers=_JSON)
            if r.status_code not in (200, 204):
                raise PolicyLoadError(f"data: {r.text[:500]}")
        except httpx.HTTPError as exc:
            raise PolicyLoadError(f"OPA server at {self.url} unreachable: {exc}") from exc

    def evaluate(self, query: str, input: Any) -> Any:  # noqa: A002
        path = query_path(query).replace(".", "/")
        try:
            r = self._client.post(f"/v1/data/{path}?strict-builtin-errors=true",
                                  content=orjson.dumps({"input": input}), headers=_JSON)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"OPA server unreachable: {type(exc).__name__}") from exc
        if r.status_code != 200:
            raise PolicyError(f"OPA server answered {r.status_code}")
        try:
            body = orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise PolicyError("OPA server answered with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise PolicyError("OPA server answered with a body that is not an object")
        return body["result"] if "result" in body else UNDEFINED

    def close(self) -> None:
        self._client.close()
