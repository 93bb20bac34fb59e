"""`llm-authz policy build`: policies, data and tenants → an OPA bundle (.tar.gz), signed on request.

The archive is what `opa build` writes: the modules at their paths, one `/data.json` with all
data, a `/.manifest` with `revision` and `roots`, and `/.signatures.json` when signed. Tenant
files given with --tenants go to `data.tenants.<id>` exactly as validated (key hashes
included), and key set files they name (`jwks_file`) travel in the bundle beside them. The
output is reproducible: the same inputs give the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import orjson

from llm_authz.bundle import signing
from llm_authz.bundle.format import MANIFEST, _package_path
from llm_authz.errors import BundleError
from llm_authz.policy import canonical_json, deep_merge, read_data, read_modules

TENANTS_DIR = "tenants"


def collect(paths: list[Path], tenants_dir: Path | None = None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Modules (by bundle path) and merged data from policy files and directories, plus tenants."""
    from llm_authz.tenants import load_tenants

    modules: dict[str, bytes] = {}
    data: dict[str, Any] = {}
    extra: dict[str, bytes] = {}
    for path in paths:
        for name, source in read_modules(path).items():
            key = name if path.is_dir() else path.name
            if key in modules:
                raise BundleError(f"two modules would be written at {key}")
            modules[key] = source.encode("utf-8")
        if path.is_dir() or path.suffix in (".json", ".yaml", ".yml"):
            deep_merge(data, read_data(path), "data")
    if tenants_dir is not None:
        tenants, errors = load_tenants(tenants_dir)
        if errors:
            raise BundleError("invalid tenant files:\n" + "\n".join(f"  {e}" for e in errors))
        if "tenants" in data:
            raise BundleError("data.tenants is already set by the policy data: leave out --tenants")
        data["tenants"] = {}
        for tid, tf in sorted(tenants.items()):
            data["tenants"][tid] = tf.tenant.model_dump(mode="json", exclude_none=True)
            for issuer in tf.tenant.credentials.jwt:
                if issuer.jwks_file:
                    inside = _inside(issuer.jwks_file)
                    try:
                        extra[f"{TENANTS_DIR}/{inside}"] = tf.resolve(issuer.jwks_file).read_bytes()
                    except OSError as exc:
                        raise BundleError(f"{tf.path}: {issuer.jwks_file}: {exc.strerror}") from None
    return {**modules, **extra}, data


def _inside(relative: str) -> str:
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts:
        raise BundleError(f"jwks_file {relative!r} must be a path below the tenant directory to go in a bundle")
    return Path(relative).as_posix()


def default_roots(modules: dict[str, bytes], data: dict[str, Any]) -> list[str]:
    """The first segment of every package and every top-level data key: what the bundle owns."""
    roots = {_package_path(name, src.decode()).split("/")[0]
             for name, src in modules.items() if name.endswith(".rego")}
    roots.update(data)
    return sorted(r for r in roots if r)


def build(paths: list[Path], output: Path, revision: str | None = None, signing_key: Path | None = None,
          tenants_dir: Path | None = None, roots: list[str] | None = None) -> dict[str, Any]:
    """Write the bundle; return its manifest."""
    files, data = collect(paths, tenants_dir)
    if not any(name.endswith(".rego") for name in files):
        raise BundleError("no .rego modules to put in the bundle")
    if revision is None:
        revision = hashlib.sha256(canonical_json({"files": {k: v.decode("utf-8", "replace")
                                                             for k, v in files.items()},
                                                   "data": data})).hexdigest()
    manifest = {"revision": revision, "roots": roots if roots is not None else default_roots(files, data),
                "rego_version": 1}
    entries = dict(files)
    entries["data.json"] = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    entries[MANIFEST] = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
    if signing_key is not None:
        key = signing.load_private_key(signing_key)
        infos = [signing.FileInfo(name, signing.file_digest(name, raw)) for name, raw in sorted(entries.items())]
        entries[signing.SIGNATURES_FILE] = signing.sign(infos, key)
    output.write_bytes(archive(entries))
    return manifest


def archive(entries: dict[str, bytes]) -> bytes:
    """A reproducible .tar.gz of these files (paths rooted at /, as OPA writes them)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, raw in sorted(entries.items()):
            info = tarfile.TarInfo("/" + name)
            info.size = len(raw)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()
