"""The `opa` engine: an OPA server (usually a sidecar) over its REST Data API.

Policies and data are pushed with PUT /v1/policies and PUT /v1/data at load time, so the
server evaluates exactly the revision the service hashed and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from llm_authz.engine.base import UNDEFINED, query_path
from llm_authz.errors import EngineUnavailable, PolicyError, PolicyLoadError


class OpaServerEngine:
    name = "opa"

    def __init__(self, url: str, modules: Mapping[str, str], data: Any, timeout: float = 1.0):
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        try:
            for name, source in modules.items():
                r = self._client.put(f"/v1/policies/{name}", content=source.encode(),
                                     headers={"content-type": "text/plain"})
                if r.status_code != 200:
                    raise PolicyLoadError(f"{name}: {r.text[:500]}")
            r = self._client.put("/v1/data", content=orjson.dumps(data or {}),
                                 headers={"content-type": "application/json"})
            if r.status_code not in (200, 204):
                raise PolicyLoadError(f"data: {r.text[:500]}")
        except httpx.HTTPError as exc:
            raise PolicyLoadError(f"OPA server at {url} unreachable: {exc}") from exc

    def evaluate(self, query: str, input: Any) -> Any:  # noqa: A002
        path = query_path(query).replace(".", "/")
        try:
            r = self._client.post(f"/v1/data/{path}?strict-builtin-errors=true",
                                  content=orjson.dumps({"input": input}),
                                  headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"OPA server unreachable: {type(exc).__name__}") from exc
        if r.status_code != 200:
            raise PolicyError(f"OPA server answered {r.status_code}: {r.text[:300]}")
        body = orjson.loads(r.content)
        return body["result"] if "result" in body else UNDEFINED

    def close(self) -> None:
        self._client.close()
