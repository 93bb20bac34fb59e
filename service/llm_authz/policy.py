"""Policies + tenant data → a revision: the content hash of exactly what decides, and its engine.

A revision is immutable. Reloading builds a new one and swaps it in whole, so a check never
sees half of an update.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from llm_authz.engine.base import Engine
from llm_authz.errors import PolicyLoadError
from llm_authz.mounts import current_dir, walk_files
from llm_authz.tenants import TenantFile, load_tenants

if TYPE_CHECKING:
    from llm_authz.bundle.format import Bundle

REVISION_FORMAT = "llm-authz/revision/v1"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the form every hash in llm-authz is taken over."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def document_json(value: Any) -> bytes:
    """canonical_json of a revision's document; data may hold integers beyond 64 bits (OPA keeps
    them exact), which orjson refuses and the standard library writes exactly."""
    try:
        return canonical_json(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json_exact(raw: bytes | str) -> Any:
    """JSON with integers kept exact at any size (orjson would read them as floats), as OPA reads
    data and input; NaN and Infinity refused."""
    return json.loads(raw, parse_constant=_no_constant)


def read_modules(root: Path, include_tests: bool = False) -> dict[str, str]:
    """Every .rego file under root (or root itself), by path relative to root.

    A directory mounted from a ConfigMap is read through its `..data` link: each module once.
    """
    if root.is_file():
        return {root.name: root.read_text(encoding="utf-8")}
    if not root.is_dir():
        raise PolicyLoadError(f"{root}: no such policy file or directory")
    base = current_dir(root)
    modules = {}
    for path in sorted(p for p in walk_files(base) if p.suffix == ".rego"):
        if not include_tests and path.name.endswith("_test.rego"):
            continue
        modules[path.relative_to(base).as_posix()] = path.read_text(encoding="utf-8")
    return modules


def read_data_file(path: Path) -> Any:
    try:
        if path.suffix == ".json":
            return load_json_exact(path.read_bytes())
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PolicyLoadError(f"{path}: {exc}") from exc


def deep_merge(into: dict[str, Any], value: dict[str, Any], where: str) -> None:
    for key, item in value.items():
        if isinstance(into.get(key), dict) and isinstance(item, dict):
            deep_merge(into[key], item, f"{where}.{key}")
        elif key in into:
            raise PolicyLoadError(f"data conflict at {where}.{key}")
        else:
            into[key] = item


def read_data(root: Path) -> dict[str, Any]:
    """JSON/YAML data files under root, each placed at its directory's path (as `opa eval -d` does)."""
    data: dict[str, Any] = {}
    if root.is_file():
        paths, base = ([root] if root.suffix in (".json", ".yaml", ".yml") else []), root.parent
    elif root.is_dir():
        base = current_dir(root)
        paths = sorted(walk_files(base))
    else:
        raise PolicyLoadError(f"{root}: no such file or directory")
    for path in paths:
        if path.suffix not in (".json", ".yaml", ".yml") or not path.is_file():
            continue
        loaded = read_data_file(path)
        for part in reversed(path.parent.relative_to(base).parts):
            loaded = {part: loaded}
        if not isinstance(loaded, dict):
            raise PolicyLoadError(f"{path}: data at the root must be an object")
        deep_merge(data, loaded, "data")
    return data


@dataclass(frozen=True)
class PolicySource:
    """The inputs of a revision, as they are archived and replayed."""

    modules: dict[str, str]
    data: dict[str, Any]
    entrypoint: str

    @property
    def document(self) -> dict[str, Any]:
        return {"format": REVISION_FORMAT, "modules": self.modules, "data": self.data,
                "entrypoint": self.entrypoint}

    @cached_property
    def revision(self) -> str:
        # Every audit record names it: hash the (immutable) source once, not once per check.
        return hashlib.sha256(document_json(self.document)).hexdigest()

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> "PolicySource":
        if doc.get("format") != REVISION_FORMAT:
            raise PolicyLoadError(f"not a {REVISION_FORMAT} document")
        return cls(modules=doc["modules"], data=doc["data"], entrypoint=doc["entrypoint"])


def tenant_data(tenants_dir: Path) -> dict[str, Any]:
    """data.tenants for a tenant directory, exactly as `serve` builds it; raises PolicyLoadError."""
    tenants, errors = load_tenants(tenants_dir)
    if errors:
        raise PolicyLoadError("invalid tenant files:\n" + "\n".join(f"  {e}" for e in errors))
    return {tid: tf.tenant.policy_data() for tid, tf in sorted(tenants.items())}


def load_source(policies: Path, tenants_dir: Path, entrypoint: str) -> tuple[PolicySource, dict[str, TenantFile]]:
    """Read policies and tenant files; raise PolicyLoadError listing every problem."""
    tenants, errors = load_tenants(tenants_dir)
    if errors:
        raise PolicyLoadError("invalid tenant files:\n" + "\n".join(f"  {e}" for e in errors))
    modules = read_modules(policies)
    if not modules:
        raise PolicyLoadError(f"{policies}: no .rego policies found")
    data = read_data(policies)
    data["tenants"] = {tid: tf.tenant.policy_data() for tid, tf in sorted(tenants.items())}
    return PolicySource(modules=modules, data=data, entrypoint=entrypoint), tenants


def load_bundle_source(bundle: "Bundle", tenants_dir: Path, entrypoint: str,
                       files_dir: Path) -> tuple[PolicySource, dict[str, TenantFile]]:
    """Policies and data from a bundle; tenants from its `data.tenants` if it has them, else from tenants_dir.

    Files the bundle carries under tenants/ (key sets named by `jwks_file`) are written below
    files_dir, which stands for the tenant directory.
    """
    from llm_authz.tenants import tenants_from_data

    if not bundle.modules:
        raise PolicyLoadError("the bundle holds no .rego modules")
    data = dict(bundle.data)
    if "tenants" in data:
        for name, raw in bundle.files.items():
            if name.startswith("tenants/") and not name.rsplit("/", 1)[-1].startswith("data."):
                target = files_dir / "tenants" / name[len("tenants/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(raw)
        tenants, errors = tenants_from_data(data["tenants"], files_dir / "tenants")
    else:
        tenants, errors = load_tenants(tenants_dir)
    if errors:
        raise PolicyLoadError("invalid tenant files:\n" + "\n".join(f"  {e}" for e in errors))
    data["tenants"] = {tid: tf.tenant.policy_data() for tid, tf in sorted(tenants.items())}
    return PolicySource(modules=dict(bundle.modules), data=data, entrypoint=entrypoint), tenants


@dataclass
class Revision:
    """A loaded, compiled revision: what decides checks until the next reload."""

    source: PolicySource
    engine: Engine
    tenants: dict[str, TenantFile]
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    bundle_revision: str | None = None  # the OPA bundle's manifest revision, when policies came from one
    files_dir: Path | None = None  # a private directory of files the bundle carried; removed on close

    @property
    def id(self) -> str:
        return self.source.revision

    def close(self) -> None:
        self.engine.close()
        if self.files_dir is not None:
            import shutil

            shutil.rmtree(self.files_dir, ignore_errors=True)


def build_engine(source: PolicySource, kind: str = "embedded", opa_url: str = "", pool_size: int = 1,
                 opa_push: bool = False) -> Engine:
    if kind == "embedded":
        from llm_authz.engine.embedded import EmbeddedEngine

        engine = EmbeddedEngine(source.modules, source.data, pool_size=pool_size)
        engine.compile_check(source.entrypoint)
        return engine
    if kind == "opa":
        from llm_authz.engine.opa import OpaServerEngine

        return OpaServerEngine(opa_url, source.modules, source.data, push=opa_push)
    raise PolicyLoadError(f"unknown engine {kind!r}")


__all__ = ["PolicySource", "Revision", "build_engine", "canonical_json", "document_json", "load_json_exact",
           "load_source"]
