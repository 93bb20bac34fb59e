"""Tenant files (`tenants/<id>.yaml`): models, loading and validation with file and line in errors."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm_authz.errors import JwksError, TenantFileError
from llm_authz.identity.jwks import SUPPORTED_ALGORITHMS, load_jwks_file
from llm_authz.mounts import current_dir, is_kubelet_internal

OPERATIONS = frozenset(
    {"chat", "completions", "embeddings", "images", "audio", "moderations",
     "responses", "predict", "infer", "generate"}
)
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimits(_Strict):
    """Token buckets: each per-minute rate refills its bucket continuously; the bucket holds at most
    `burst` requests (default: a minute's worth) and `burst_tokens` tokens (default: a minute's worth)."""

    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    burst: int | None = Field(default=None, ge=1, description="the most requests the bucket holds")
    burst_tokens: int | None = Field(default=None, ge=1, description="the most tokens the bucket holds")

    @model_validator(mode="after")
    def _burst_has_a_rate(self) -> "RateLimits":
        if self.burst is not None and self.requests_per_minute is None:
            raise ValueError("burst needs requests_per_minute")
        if self.burst_tokens is not None and self.tokens_per_minute is None:
            raise ValueError("burst_tokens needs tokens_per_minute")
        return self


class ModelGrant(_Strict):
    """What a tenant may do with one model. `max_tokens` narrows the tenant-wide limit; `limits`
    are this model's own request and token buckets, beside the tenant's."""

    operations: list[str] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    limits: RateLimits | None = None

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, ops: list[str]) -> list[str]:
        unknown = sorted(set(ops) - OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; known: {sorted(OPERATIONS)}")
        return ops


class Limits(RateLimits):
    max_body_bytes: int = Field(default=1_048_576, ge=0)
    max_tokens: int = Field(default=4096, ge=0)


class SignalSettings(_Strict):
    """Credential anomaly rules of the default policy (input.signals). Off when a tenant has none.

    `deny` refuses an anomalous request (403 credential_anomaly); `flag` allows it and tells the
    upstream (x-llm-authz-flags); `observe` only computes the signals, for rules of one's own and
    for trying thresholds on past traffic with `replay` before turning them on."""

    action: Literal["deny", "flag", "observe"]
    max_score: float = Field(default=6.0, gt=0, description="baseline deviation score above which a request is anomalous")
    travel_minutes: int = Field(default=60, ge=0, description="a use from another country or AS this soon after the last is impossible travel (0: off)")
    max_concurrent_networks: int | None = Field(default=3, ge=1, description="distinct source networks within a minute")
    max_countries: int | None = Field(default=None, ge=1, description="distinct countries within a day")


class Network(_Strict):
    allowed_cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0", "::/0"])

    @field_validator("allowed_cidrs")
    @classmethod
    def _valid_cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR: {exc}") from None
        return cidrs


class ApiKey(_Strict):
    """An API key, stored as the SHA-256 of the key; the key itself is never stored."""

    id: str = Field(min_length=1, max_length=128)
    sha256: str
    scopes: list[str] = Field(default_factory=list)
    expires: datetime | None = None
    limits: RateLimits | None = Field(default=None, description="this key's own request and token buckets")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("must be the 64 lower-case hex digits of the key's SHA-256")
        return value

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2027-01-01T00:00:00Z")
        return value


class JwtIssuer(_Strict):
    """A trusted token issuer: its tokens name this tenant (alone, or by `tenant_claim`)."""

    issuer: str = Field(min_length=1, description="the exact `iss` of the tokens")
    audiences: list[str] = Field(min_length=1, description="a token's `aud` must name one of these")
    jwks_file: str | None = Field(default=None, description="public keys, relative to the tenant file")
    jwks_url: str | None = Field(default=None, description="public keys, fetched and cached")
    tenant_claim: str | None = Field(default=None, min_length=1,
                                     description="the claim whose value must equal the tenant id")
    scopes_claim: str | None = Field(default=None, min_length=1,
                                     description="where scopes are (default: `scope`, else `scp`)")
    claims: list[str] = Field(default_factory=list, description="non-secret claims passed to the policy")
    algorithms: list[str] | None = Field(default=None, min_length=1,
                                         description="accepted `alg` values (default: every asymmetric one)")

    @model_validator(mode="after")
    def _one_key_source(self) -> "JwtIssuer":
        if not (self.jwks_file or self.jwks_url):
            raise ValueError("a JWT issuer needs jwks_file or jwks_url")
        if self.jwks_file and self.jwks_url:
            raise ValueError("name one of jwks_file or jwks_url, not both")
        return self

    @field_validator("jwks_url")
    @classmethod
    def _safe_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parsed = urlsplit(url)
        if parsed.scheme == "https" and parsed.hostname:
            return url
        if parsed.scheme == "http" and _is_loopback(parsed.hostname):
            return url
        raise ValueError("must be an https:// URL (plain http only to a loopback address): "
                         "keys fetched in the clear could be replaced on the way")

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, algs: list[str] | None) -> list[str] | None:
        for alg in algs or ():
            if alg not in SUPPORTED_ALGORITHMS:
                why = ("shared-secret (HMAC) and unsigned tokens are never accepted"
                       if alg.lower() == "none" or alg.upper().startswith("HS") else "not supported")
                raise ValueError(f"algorithm {alg!r}: {why}; use some of {list(SUPPORTED_ALGORITHMS)}")
        return algs


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class MtlsPrincipal(_Strict):
    spiffe_id: str = Field(pattern=r"^spiffe://[^/\s]+(/\S*)?$")
    scopes: list[str] = Field(default_factory=list)


class Credentials(_Strict):
    api_keys: list[ApiKey] = Field(default_factory=list)
    jwt: list[JwtIssuer] = Field(default_factory=list)
    mtls: list[MtlsPrincipal] = Field(default_factory=list)


class Tenant(_Strict):
    id: str
    tier: str = Field(min_length=1)
    models: dict[str, ModelGrant] = Field(default_factory=dict)
    scopes_required: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    network: Network = Field(default_factory=Network)
    credentials: Credentials = Field(default_factory=Credentials)
    signals: SignalSettings | None = None

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _TENANT_ID.match(value):
            raise ValueError("must be lower-case letters, digits, '-' or '_' (at most 63)")
        return value

    def policy_data(self) -> dict[str, Any]:
        """The tenant as the policy sees it under data.tenants[id]: the whole file, key hashes left out."""
        data = self.model_dump(mode="json", exclude_none=True)
        for key in data["credentials"]["api_keys"]:
            key.pop("sha256", None)
        return data


class TenantFile(BaseModel):
    """A loaded tenant and where it came from (relative paths in it resolve against `path`)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    tenant: Tenant
    path: Path

    def resolve(self, relative: str) -> Path:
        """A path named in the tenant file, relative to the file's directory."""
        return self.path.parent / relative


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node a pydantic error location points at (nearest known parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = None
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    found = value_node
                    line = key_node.start_mark.line + 1
                    break
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def load_tenant_file(path: Path) -> TenantFile:
    """Parse and validate one tenant file; raise TenantFileError naming file, field and line."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TenantFileError(name, f"cannot read: {exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TenantFileError(name, f"not valid YAML: {getattr(exc, 'problem', exc)}",
                              line=mark.line + 1 if mark else None) from exc
    if not isinstance(raw, dict):
        raise TenantFileError(name, "a tenant file must hold a mapping", line=1)
    try:
        tenant = Tenant.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        field = ".".join(str(p) for p in loc)
        message = first["msg"].removeprefix("Value error, ")
        raise TenantFileError(name, message, field=field, line=_line_of(node, loc)) from exc
    if tenant.id != path.stem:
        raise TenantFileError(name, f"id {tenant.id!r} must match the file name {path.stem!r}",
                              field="id", line=_line_of(node, ("id",)))
    loaded = TenantFile(tenant=tenant, path=path)
    issuers: set[str] = set()
    for i, entry in enumerate(tenant.credentials.jwt):
        loc = ("credentials", "jwt", i)
        if entry.issuer in issuers:
            raise TenantFileError(name, f"issuer {entry.issuer!r} is listed twice",
                                  field=f"credentials.jwt.{i}.issuer", line=_line_of(node, (*loc, "issuer")))
        issuers.add(entry.issuer)
        if entry.jwks_file:
            try:
                load_jwks_file(loaded.resolve(entry.jwks_file))
            except JwksError as exc:
                raise TenantFileError(name, str(exc), field=f"credentials.jwt.{i}.jwks_file",
                                      line=_line_of(node, (*loc, "jwks_file"))) from None
    return loaded


def tenant_paths(directory: Path) -> list[Path]:
    """The tenant files directly in `directory`; the kubelet's `..` entries are not tenants."""
    return sorted(p for p in directory.glob("*.y*ml")
                  if p.suffix in (".yaml", ".yml") and not is_kubelet_internal(p.name))


def load_tenants(directory: Path) -> tuple[dict[str, TenantFile], list[TenantFileError]]:
    """Every tenant file in a directory, plus every error found (all files are checked)."""
    tenants: dict[str, TenantFile] = {}
    errors: list[TenantFileError] = []
    if not directory.is_dir():
        return tenants, [TenantFileError(str(directory), "tenant directory not found")]
    directory = current_dir(directory)  # a ConfigMap/Secret mount: its current revision, read once
    key_owner: dict[str, str] = {}
    for path in tenant_paths(directory):
        try:
            loaded = load_tenant_file(path)
        except TenantFileError as exc:
            errors.append(exc)
            continue
        for key in loaded.tenant.credentials.api_keys:
            owner = key_owner.setdefault(key.sha256, f"{loaded.tenant.id}/{key.id}")
            if owner != f"{loaded.tenant.id}/{key.id}":
                errors.append(TenantFileError(str(path), f"API key hash already used by {owner}",
                                              field=f"credentials.api_keys[{key.id}]"))
        tenants[loaded.tenant.id] = loaded
    errors.extend(_issuer_conflicts(tenants))
    errors.extend(_principal_conflicts(tenants))
    return tenants, errors


def _principal_conflicts(tenants: dict[str, TenantFile]) -> list[TenantFileError]:
    """A SPIFFE ID binds one tenant: the same ID in two tenant files is an error."""
    owner: dict[str, str] = {}
    errors = []
    for tf in tenants.values():
        for principal in tf.tenant.credentials.mtls:
            first = owner.setdefault(principal.spiffe_id, tf.tenant.id)
            if first != tf.tenant.id:
                errors.append(TenantFileError(str(tf.path), f"SPIFFE ID {principal.spiffe_id!r} is already "
                                              f"bound to tenant {first!r}", field="credentials.mtls.spiffe_id"))
    return errors


def _issuer_conflicts(tenants: dict[str, TenantFile]) -> list[TenantFileError]:
    """Two tenants trusting one issuer must both name tenant_claim, or a token could pick its tenant."""
    by_issuer: dict[str, list[tuple[str, JwtIssuer, Path]]] = {}
    for tf in tenants.values():
        for entry in tf.tenant.credentials.jwt:
            by_issuer.setdefault(entry.issuer, []).append((tf.tenant.id, entry, tf.path))
    errors = []
    for issuer, entries in by_issuer.items():
        if len(entries) > 1:
            for tenant_id, entry, path in entries:
                if not entry.tenant_claim:
                    others = sorted(t for t, _, _ in entries if t != tenant_id)
                    errors.append(TenantFileError(
                        str(path), f"issuer {issuer!r} is also trusted by {others}: name tenant_claim",
                        field="credentials.jwt.tenant_claim"))
    return errors


def tenants_from_data(tenants_data: Any, base: Path, origin: str = "bundle") -> tuple[dict[str, TenantFile],
                                                                                      list[TenantFileError]]:
    """Tenants held as data (`data.tenants.<id>` of a bundle), validated exactly as tenant files are.

    `base` stands for the tenant directory: a `jwks_file` resolves against it.
    """
    tenants: dict[str, TenantFile] = {}
    errors: list[TenantFileError] = []
    if not isinstance(tenants_data, dict):
        return tenants, [TenantFileError(f"{origin}:data.tenants", "must be an object of tenants by id")]
    key_owner: dict[str, str] = {}
    for tid, raw in sorted(tenants_data.items()):
        name = f"{origin}:data.tenants.{tid}"
        if not isinstance(raw, dict):
            errors.append(TenantFileError(name, "a tenant must be an object"))
            continue
        try:
            tenant = Tenant.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            errors.append(TenantFileError(name, first["msg"].removeprefix("Value error, "),
                                          field=".".join(str(p) for p in loc)))
            continue
        if tenant.id != tid:
            errors.append(TenantFileError(name, f"id {tenant.id!r} must match its key {tid!r}", field="id"))
            continue
        loaded = TenantFile(tenant=tenant, path=base / f"{tid}.yaml")
        problem = None
        for i, entry in enumerate(tenant.credentials.jwt):
            if entry.jwks_file:
                try:
                    load_jwks_file(loaded.resolve(entry.jwks_file))
                except JwksError as exc:
                    problem = TenantFileError(name, str(exc), field=f"credentials.jwt.{i}.jwks_file")
        if problem is not None:
            errors.append(problem)
            continue
        for key in tenant.credentials.api_keys:
            owner = key_owner.setdefault(key.sha256, f"{tid}/{key.id}")
            if owner != f"{tid}/{key.id}":
                errors.append(TenantFileError(name, f"API key hash already used by {owner}",
                                              field=f"credentials.api_keys[{key.id}]"))
        tenants[tid] = loaded
    errors.extend(_issuer_conflicts(tenants))
    errors.extend(_principal_conflicts(tenants))
    return tenants, errors
