"""Reading an OPA bundle (a .tar.gz or a directory) the way OPA reads it.

- `.manifest` (JSON): `revision`, `roots` (default: the whole of data), `rego_version`, `metadata`.
- `data.json` / `data.yaml` / `data.yml`: placed at their directory's path under data
  (`a/b/data.json` → `data.a.b`), merged; a conflict is an error.
- `*.rego`: modules. Every module's package and every data path must lie under a root.
- `.signatures.json`: verified when a public key is given (signing.py). As in OPA, a signed
  bundle without a key and an unsigned bundle with one are both refused.
- Delta bundles (`patch.json`) and Wasm/plan modules are refused: this service evaluates Rego.

Hostile archives are refused, never half-read: absolute or `..` paths, links, devices, more than
`max_bytes` once decompressed, the same file twice.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from llm_authz.bundle import signing
from llm_authz.errors import BundleError, BundleSignatureError

MANIFEST = ".manifest"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_PACKAGE = re.compile(r"^[ \t]*package[ \t]+([^\s#]+)", re.MULTILINE)
_COMMENT = re.compile(r"#[^\n]*")


@dataclass(frozen=True)
class Bundle:
    """A bundle's contents, verified and checked against its roots."""

    revision: str
    roots: tuple[str, ...]
    modules: dict[str, str]
    data: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    signed: bool = False
    files: dict[str, bytes] = field(default_factory=dict, repr=False)


def read_bundle(path: Path, public_key: Any = None, max_bytes: int = DEFAULT_MAX_BYTES,
                skip_verify: bool = False) -> Bundle:
    """A bundle from a .tar.gz file or a directory laid out as one."""
    if path.is_dir():
        return from_files(_dir_files(path, max_bytes), public_key, skip_verify)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle: {exc.strerror}") from None
    return read_bundle_bytes(raw, public_key, max_bytes, skip_verify)


def read_bundle_bytes(raw: bytes, public_key: Any = None, max_bytes: int = DEFAULT_MAX_BYTES,
                      skip_verify: bool = False) -> Bundle:
    """A bundle from the bytes of its .tar.gz (what a bundle server sends)."""
    return from_files(_tar_files(raw, max_bytes), public_key, skip_verify)


def _clean(name: str) -> str:
    cleaned = posixpath.normpath("/" + name.replace("\\", "/")).lstrip("/")
    if not cleaned or cleaned == ".":
        raise BundleError(f"bundle entry {name!r} has no file name")
    return cleaned


def _tar_files(raw: bytes, max_bytes: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BundleError(f"bundle entry {member.name!r} is not a regular file")
                name = _clean(member.name)
                total += member.size
                if total > max_bytes:
                    raise BundleError(f"bundle is larger than {max_bytes} bytes once decompressed")
                if name in files:
                    raise BundleError(f"bundle holds {name} twice")
                handle = tar.extractfile(member)
                files[name] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"not a bundle archive (tar.gz): {exc}") from None
    return files


def _dir_files(root: Path, max_bytes: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: {exc.strerror}") from None
        total += len(content)
        if total > max_bytes:
            raise BundleError(f"{root}: bundle is larger than {max_bytes} bytes")
        files[name] = content
    return files


def from_files(files: dict[str, bytes], public_key: Any = None, skip_verify: bool = False) -> Bundle:
    """Check and assemble a bundle from its files, by path inside the bundle.

    skip_verify (local tooling only, like `opa eval -b` without a key) reads a signed bundle unverified.
    """
    signatures = files.pop(signing.SIGNATURES_FILE, None)
    if skip_verify and public_key is None:
        pass
    elif signatures is not None and public_key is None:
        raise BundleSignatureError("the bundle is signed but no verification key is configured "
                                   "(--bundle-public-key)")
    if signatures is None and public_key is not None:
        raise BundleSignatureError("bundle missing .signatures.json file (a verification key is configured)")
    if signatures is not None and public_key is not None:
        signing.verify(signatures, files, public_key)

    manifest: dict[str, Any] = {}
    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    for name, raw in sorted(files.items()):
        base = name.rsplit("/", 1)[-1]
        if base == "patch.json":
            raise BundleError("delta bundles (patch.json) are not supported: serve a snapshot bundle")
        if base in ("policy.wasm", "plan.json"):
            raise BundleError(f"{name}: Wasm and plan modules are not supported: the bundle must hold Rego")
        if name.endswith(".rego"):
            try:
                modules[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BundleError(f"{name}: not UTF-8") from None
        elif base in ("data.json", "data.yaml", "data.yml"):
            _insert(data, name, _parse_data(name, raw))
        elif name.endswith(MANIFEST):
            manifest = _parse_manifest(name, raw)
    roots = _roots(manifest)
    version = manifest.get("rego_version")
    if version not in (None, 1):
        raise BundleError(f".manifest: rego_version {version!r}: only Rego v1 bundles are supported")
    if manifest.get("file_rego_versions"):
        raise BundleError(".manifest: file_rego_versions is not supported (only Rego v1 modules)")
    for name, source in modules.items():
        package = _package_path(name, source)
        if not _contains(roots, package):
            raise BundleError(f"manifest roots {list(roots)} do not permit 'data.{package.replace('/', '.')}' "
                              f"in module '{name}'")
    _check_data_roots(data, roots)
    revision = manifest.get("revision", "")
    return Bundle(revision=revision, roots=roots, modules=modules, data=data, manifest=manifest,
                  signed=signatures is not None, files={**files, **({signing.SIGNATURES_FILE: signatures}
                                                                     if signatures is not None else {})})


def _parse_data(name: str, raw: bytes) -> Any:
    try:
        if name.endswith(".json"):
            return orjson.loads(raw)
        return yaml.safe_load(raw.decode("utf-8"))
    except (orjson.JSONDecodeError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BundleError(f"bundle load failed on {name}: {exc}") from None


def _parse_manifest(name: str, raw: bytes) -> dict[str, Any]:
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"bundle load failed on manifest decode: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{name}: the manifest must be a JSON object")
    if not isinstance(manifest.get("revision", ""), str):
        raise BundleError(f"{name}: revision must be a string")
    roots = manifest.get("roots")
    if roots is not None and (not isinstance(roots, list) or not all(isinstance(r, str) for r in roots)):
        raise BundleError(f"{name}: roots must be a list of strings")
    return manifest


def _roots(manifest: dict[str, Any]) -> tuple[str, ...]:
    roots = tuple(r.strip("/") for r in (manifest.get("roots") if manifest.get("roots") is not None else [""]))
    for i, a in enumerate(roots):
        for b in roots[i + 1:]:
            if _root_contains(a, b) or _root_contains(b, a):
                raise BundleError(f"manifest has overlapped roots: '{a}' and '{b}'")
    return roots


def _root_contains(root: str, path: str) -> bool:
    if root == "":
        return True
    r, p = root.split("/"), path.split("/")
    return len(r) <= len(p) and p[:len(r)] == r


def _contains(roots: tuple[str, ...], path: str) -> bool:
    return any(_root_contains(root, path) for root in roots)


def _package_path(name: str, source: str) -> str:
    match = _PACKAGE.search(_COMMENT.sub("", source))
    if match is None:
        raise BundleError(f"{name}: no package declaration")
    ref = match.group(1)
    parts = [p for p in re.split(r"\.|\[\"|\"\]", ref) if p]
    return "/".join(parts)


def _insert(data: dict[str, Any], name: str, value: Any) -> None:
    directory = posixpath.dirname(name).strip("/.")
    key = directory.split("/") if directory else []
    if not key and not isinstance(value, dict):
        raise BundleError(f"bundle load failed on {name}: root value must be object")
    node = data
    for part in key[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise BundleError(f"failed to insert data file from path {directory}")
        node = child
    if key:
        last = key[-1]
        if last in node:
            if not (isinstance(node[last], dict) and isinstance(value, dict)):
                raise BundleError(f"failed to insert data file from path {directory}")
            _merge(node[last], value, directory)
        else:
            node[last] = value
    else:
        _merge(node, value, "")


def _merge(into: dict[str, Any], value: dict[str, Any], where: str) -> None:
    for key, item in value.items():
        if key in into:
            if isinstance(into[key], dict) and isinstance(item, dict):
                _merge(into[key], item, f"{where}/{key}")
            else:
                raise BundleError(f"failed to insert data file from path {where or '/'}: conflict at {key}")
        else:
            into[key] = item


def _check_data_roots(data: dict[str, Any], roots: tuple[str, ...]) -> None:
    def visit(node: Any, path: str) -> None:
        if _contains(roots, path) and path != "":
            return
        if path == "" and "" in roots:
            return
        if isinstance(node, dict) and any(_root_contains(path, root) for root in roots):
            for key, child in node.items():
                visit(child, f"{path}/{key}".strip("/"))
            return
        raise BundleError(f"manifest roots {list(roots)} do not permit data at path '/{path}' "
                          "(hint: check bundle directory structure)")

    visit(data, "")
