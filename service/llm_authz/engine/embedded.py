"""The embedded engine: OPA's own Go evaluator in-process (opa-golib-python-bindings), strict builtins.

Each OpaEngine serialises its evaluations, and the Go call releases the GIL, so a small pool of
engines lets evaluations run on several cores. Policies are compiled once per engine; an
evaluation reuses OPA's prepared query.

On the check path the input is first projected to what the policies can read (see
projection.py), then handed to the Go library as JSON made by orjson, and the answer is read
back with orjson: the bindings' own path (json.dumps / json.loads, per-call bookkeeping) cost
more than the rest of the check. See fastcall.py for what is kept exactly as the bindings do it.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Mapping
from typing import Any

from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from llm_authz.engine import fastcall
from llm_authz.engine.base import UNDEFINED, query_path
from llm_authz.engine.projection import Spec, analyse, describe, project
from llm_authz.engine.regoversion import v0_error
from llm_authz.errors import PolicyError, PolicyLoadError

log = logging.getLogger("llm_authz.engine")

_COMPILE_ERRORS = frozenset({"prepare_error", "parse_error", "compile_error"})


class EmbeddedEngine:
    name = "embedded"

    def __init__(self, modules: Mapping[str, str], data: Any, pool_size: int = 1, project_input: bool = True):
        self._pool: queue.SimpleQueue[OpaEngine] = queue.SimpleQueue()
        self._engines: list[OpaEngine] = []
        for _ in range(pool_size):
            engine = OpaEngine()
            try:
                for name, source in modules.items():
                    engine.add_policy(name, source)
                if data:
                    engine.add_data(data)
            except (OpaError, TypeError, ValueError, OverflowError) as exc:
                engine.close()
                self.close()
                message = getattr(exc, "message", None) or f"data cannot be loaded: {exc}"
                raise v0_error(message) or PolicyLoadError(message) from exc
            self._engines.append(engine)
            self._pool.put(engine)
        self.projection: Spec = _projection(modules) if project_input else None
        self._fast = fastcall.available()
        log.debug("input projection: %s", ", ".join(describe(self.projection)))

    def evaluate(self, query: str, input: Any) -> Any:  # noqa: A002
        path = query_path(query)
        doc = project(input, self.projection)
        engine = self._pool.get()
        try:
            if self._fast:
                return fastcall.eval_document(engine, path, doc)
            return engine.eval_document(path, doc)
        except OpaUndefinedError:
            return UNDEFINED
        except OpaError as exc:
            raise PolicyError(exc.message) from exc
        except (TypeError, ValueError, OverflowError) as exc:  # a value JSON cannot hold (a set, NaN)
            raise PolicyError(f"the input cannot be passed to the engine: {str(exc)[:200]}") from exc
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
                raise v0_error(exc.message) or PolicyLoadError(exc.message) from exc
        finally:
            self._pool.put(engine)

    def close(self) -> None:
        for engine in self._engines:
            engine.close()
        self._engines.clear()


def _projection(modules: Mapping[str, str]) -> Spec:
    """What of the input these modules can read, by OPA's own parser (in an engine of its own)."""
    with OpaEngine() as parser:

        def parse(source: str) -> Any:
            rows = parser.eval_query('parsed := rego.parse_module("policy.rego", input.source)', {"source": source})
            return rows[0]["parsed"]

        return analyse(modules, parse)
