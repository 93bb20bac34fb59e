"""Service configuration: defaults, overridden by a YAML file, overridden by command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm_authz.errors import ConfigError


class JwksSettings(BaseModel):
    """How key sets named by `jwks_url` are fetched and cached (files are read at load and reload)."""

    model_config = ConfigDict(extra="forbid")

    fetch_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # Cache-Control max-age is honoured within [min_ttl, max_ttl]; default_ttl when the IdP sends none.
    default_ttl_seconds: float = Field(default=300.0, gt=0)
    min_ttl_seconds: float = Field(default=60.0, gt=0)
    max_ttl_seconds: float = Field(default=86400.0, gt=0)
    # A token naming an unknown kid triggers at most one refetch per interval (per key set URL).
    unknown_kid_interval_seconds: float = Field(default=30.0, ge=0)
    # After a failed fetch: retry after this, doubling up to min_ttl; the last good keys stay in use.
    retry_seconds: float = Field(default=5.0, gt=0)
    max_bytes: int = Field(default=1024 * 1024, ge=1024)


class Config(BaseModel):
    """Everything `llm-authz serve` can be told. Field names are the YAML keys."""

    model_config = ConfigDict(extra="forbid")

    listen: str = "127.0.0.1:9191"
    policies: Path = Path("policies/rego")
    tenants: Path = Path("tenants")
    audit_dir: Path = Path("audit")
    entrypoint: str = "data.llm.authz.decision"
    engine: Literal["embedded", "opa"] = "embedded"
    opa_url: str = "http://127.0.0.1:8181"
    # engine opa: push policies and data to the OPA server (a private one). Off: query only.
    opa_push: bool = False
    engine_pool_size: int = Field(default=2, ge=1, le=64)
    metrics_listen: str = "127.0.0.1:9464"
    workers: int = Field(default=32, ge=1, le=1024)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    check_deadline_ms: int = Field(default=500, ge=1)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # Worker processes answering on the one port (SO_REUSEPORT); each writes its own audit chain.
    processes: int = Field(default=1, ge=1, le=64)
    # HTTP/2 streams one client connection may carry at once (the server's SETTINGS). Envoy opens
    # another connection when its connections are full, and the kernel hands each new connection
    # to one of the processes: a small limit spreads checks over them. Default: unlimited with one
    # process, 4 with several.
    grpc_max_concurrent_streams: int | None = Field(default=None, ge=1, le=1_000_000)
    # Deny is the only safe default. dry_run answers allow and logs the real decision.
    dry_run: bool = False
    # Read x-forwarded-client-cert only when Envoy is known to set it (SANITIZE_SET).
    trust_xfcc: bool = False
    # Trust identities already verified by Envoy's jwt_authn filter (metadata_context).
    trust_envoy_jwt_authn: bool = False
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=600)
    jwks: JwksSettings = Field(default_factory=JwksSettings)
    max_json_depth: int = Field(default=64, ge=2, le=1000)
    # Envoy's ext_authz with_request_body.max_request_bytes: a body of no declared length that fills
    # it is taken as cut short there (0: not known).
    envoy_max_request_bytes: int = Field(default=1024 * 1024, ge=0)
    # Request and token quotas per tenant: "local" counts in this process, "redis" across replicas.
    quota_backend: Literal["none", "local", "redis"] = "local"
    redis_url: str | None = None
    # Operator labels for networks (YAML list of {cidr, name, country, asn}) for input.signals.
    signals_networks: Path | None = None
    # Every Redis key starts with it: replicas sharing quotas use the same prefix.
    redis_prefix: str = Field(default="llm-authz", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    audit_durability: Literal["fsync", "buffered"] = "fsync"
    audit_commit_window_ms: float = Field(default=0.0, ge=0, le=100)
    audit_signing_key: Path | None = None
    audit_segment_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    audit_segment_seconds: int = Field(default=3600, ge=1)
    audit_checkpoint_records: int = Field(default=1000, ge=1)
    audit_checkpoint_seconds: float = Field(default=10.0, gt=0)
    audit_masks: list[str] = Field(default_factory=list)
    # Closed segments are compressed in the background; retention removes the oldest closed ones
    # (by age and/or total bytes of the directory) and anchors what stays in pruned.jsonl.
    audit_compress: Literal["zstd", "gzip", "none"] = "zstd"
    audit_retention_days: float | None = Field(default=None, gt=0)
    audit_retention_bytes: int | None = Field(default=None, ge=1024 * 1024)
    # Policy and tenant directories are watched; a change reloads like SIGHUP.
    watch: bool = True
    # TLS on the gRPC port; with a client CA, the client (Envoy) must present a certificate it signed.
    # The files are read again when they change (a rotated certificate is used from the next handshake).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # A plaintext gRPC port serving only grpc.health.v1 (Kubernetes gRPC probes cannot speak TLS).
    health_listen: str | None = None
    # json: one JSON object per log line; text: for a terminal. None: json unless stderr is a terminal.
    log_format: Literal["json", "text"] | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> "Config":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return self
    # Policies and data from an OPA bundle (a .tar.gz file, a directory, or an http(s) URL polled).
    bundle: str | None = None
    bundle_public_key: Path | None = None
    bundle_poll_seconds: float = Field(default=30.0, gt=0, le=86400)
    # Ship every decision record to this collector as OPA decision-log events (from the audit log).
    decision_log_url: str | None = None

    @field_validator("decision_log_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return url
    # Credential headers reach the policy redacted ("Bearer [redacted]") unless this opts in:
    # true for every entrypoint, or a list of the entrypoints (queries) that get them raw, as
    # OPA-Envoy hands them. The audit log redacts them either way.
    raw_credentials: bool | list[str] = False
    # The body of a request no credential authenticated is read (parsed_body, payload facts) only up
    # to this size. Behind an OPA-Envoy policy that authenticates callers itself, every request is
    # unauthenticated to llm-authz: raise it to the largest JSON body that policy must read.
    unauthenticated_body_bytes: int = Field(default=64 * 1024, ge=0)

    def raw_credentials_for(self, entrypoint: str) -> bool:
        """Whether checks evaluated at this entrypoint see the raw credential headers."""
        if isinstance(self.raw_credentials, bool):
            return self.raw_credentials
        return entrypoint in self.raw_credentials

    @field_validator("audit_masks")
    @classmethod
    def _valid_masks(cls, value: list[str]) -> list[str]:
        from llm_authz.audit.redaction import MaskError, normalize_masks

        try:
            return list(normalize_masks(value))
        except MaskError as exc:
            raise ValueError(str(exc)) from None


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the file, then the overrides whose value is not None."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config file must hold a mapping")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Config.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path or 'configuration'}: {problems}") from exc
