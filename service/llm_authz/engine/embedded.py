"""The embedded engine: OPA's own Go evaluator in-process (opa-golib-python-bindings), strict builtins.

Each OpaEngine serialises its evaluations, and the Go call releases the GIL, so a small pool of
engines lets evaluations run on several cores. Policies are compiled once per engine; an
evaluation reuses OPA's prepared query.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping
from typing import Any

from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from llm_authz.engine.base import UNDEFINED, query_path
from llm_authz.errors import PolicyError, PolicyLoadError


_COMPILE_ERRORS = frozenset({"prepare_error", "parse_error", "compile_error"})


class EmbeddedEngine:
    name = "embedded"

    def __init__(self, modules: Mapping[str, str], data: Any, pool_size: int = 1):
        self._pool: queue.SimpleQueue[OpaEngine] = queue.SimpleQueue()
        self._engines: list[OpaEngine] = []
        for _ in range(pool_size):
            engine = OpaEngine()
            try:
                for name, source in modules.items():
                    engine.add_policy(name, source)
                if data:
                    engine.add_data(data)
            except OpaError as exc:
                engine.close()
                self.close()
                raise PolicyLoadError(exc.message) from exc
            self._engines.append(engine)
            self._pool.put(engine)

    def evaluate(self, query: str, input: Any) -> Any:  # noqa: A002
        path = query_path(query)
        engine = self._pool.get()
        try:
            return engine.eval_document(path, input)
        except OpaUndefinedError:
            return UNDEFINED
        except OpaError as exc:
            raise PolicyError(exc.message) from exc
        finally:
            self._pool.put(engine)

    def compile_check(self, query: str) -> None:
        """Compile every module now (OPA compiles on first evaluation): errors surface at load time."""
        engine = self._pool.get()
        try:
            engine.eval_document(query_path(query), {})
        except OpaUndefinedError:
            pass
        except OpaError as exc:
            if exc.code in _COMPILE_ERRORS:
                raise PolicyLoadError(exc.message) from exc
        finally:
            self._pool.put(engine)

    def close(self) -> None:
        for engine in self._engines:
            engine.close()
        self._engines.clear()
