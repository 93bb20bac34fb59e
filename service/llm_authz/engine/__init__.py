"""Rego evaluation behind one small protocol: `embedded` (in-process OPA) or `opa` (REST sidecar)."""

from llm_authz.engine.base import UNDEFINED, Engine, Undefined

__all__ = ["UNDEFINED", "Engine", "Undefined"]
