"""The engine protocol every evaluator implements."""

from __future__ import annotations

from typing import Any, Protocol


class Undefined:
    """The query has no value (OPA's `{"undefined": true}`)."""

    _instance: "Undefined | None" = None

    def __new__(cls) -> "Undefined":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED = Undefined()


class Engine(Protocol):
    """Evaluates one query against compiled policies and data. Raises PolicyError on any failure."""

    name: str

    def evaluate(self, query: str, input: Any) -> Any:  # noqa: A002 - Rego's word
        """The query's value, or UNDEFINED."""

    def close(self) -> None: ...


def query_path(query: str) -> str:
    """`data.llm.authz.decision` → `llm.authz.decision`, the form the engines take."""
    if query == "data":
        return ""
    if not query.startswith("data."):
        from llm_authz.errors import PolicyError

        raise PolicyError(f"query must name a document under data, got {query!r}")
    return query[len("data."):]
