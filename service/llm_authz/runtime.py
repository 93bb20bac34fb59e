"""The running service's state: config, the revision in force, the audit log; reload swaps it whole."""

from __future__ import annotations

import logging
import threading

from llm_authz import metrics
from llm_authz.audit.writer import AuditLog
from llm_authz.check import Checker, CheckSettings, Snapshot
from llm_authz.config import Config
from llm_authz.errors import LlmAuthzError
from llm_authz.identity.jwks import JwksRegistry
from llm_authz.identity.resolve import IdentityResolver
from llm_authz.policy import Revision, build_engine, load_source
from llm_authz.quota import make_counter

log = logging.getLogger("llm_authz.runtime")


def load_snapshot(config: Config, jwks: JwksRegistry | None = None) -> Snapshot:
    """Read, validate and compile policies and tenants. Raises PolicyLoadError naming every problem.

    `jwks` keeps the remote key sets (and their caches) across reloads; a new one is made if not given.
    """
    source, tenants = load_source(config.policies, config.tenants, config.entrypoint)
    resolver = IdentityResolver.from_tenants(tenants, config, jwks or JwksRegistry(config.jwks))
    engine = build_engine(source, config.engine, config.opa_url, config.engine_pool_size)
    revision = Revision(source=source, engine=engine, tenants=tenants)
    return Snapshot(revision=revision, resolver=resolver)


class Runtime:
    def __init__(self, config: Config):
        self.config = config
        self._reload_lock = threading.Lock()
        self.jwks = JwksRegistry(config.jwks)
        snapshot = load_snapshot(config, self.jwks)
        self.audit = AuditLog.from_config(config)
        self.audit.archive_revision(snapshot.revision.source)
        self.checker = Checker(snapshot, self.audit, CheckSettings(
            max_json_depth=config.max_json_depth, dry_run=config.dry_run,
            audit_masks=tuple(config.audit_masks)), quota=make_counter(config.quota_backend, config.redis_url))
        self._announce(snapshot)

    @property
    def snapshot(self) -> Snapshot:
        return self.checker.snapshot

    def reload(self, trigger: str = "signal") -> bool:
        """Load policies and tenants again; keep the revision in force if the new one is invalid.

        `trigger` (signal, watch, ...) only says in the log line what asked for the reload.
        """
        with self._reload_lock:
            try:
                snapshot = load_snapshot(self.config, self.jwks)
                self.audit.archive_revision(snapshot.revision.source)
            except LlmAuthzError as exc:
                self.jwks.retain(self.snapshot.resolver.jwks_urls)
                metrics.POLICY_RELOADS.labels(outcome="error").inc()
                log.error("reload (%s) refused, keeping revision %s: %s", trigger, self.snapshot.revision.id[:12],
                          exc, extra={"event": "reload", "outcome": "error", "trigger": trigger,
                                      "revision": self.snapshot.revision.id})
                return False
            old = self.checker.snapshot
            self.checker.snapshot = snapshot
            self.jwks.retain(snapshot.resolver.jwks_urls)
            metrics.POLICY_RELOADS.labels(outcome="ok").inc()
            metrics.POLICY_INFO.remove(old.revision.id)
            self._announce(snapshot, trigger)
            # Checks that already read the old snapshot may still be evaluating: close it later.
            threading.Timer(30.0, old.revision.close).start()
            return True

    def _announce(self, snapshot: Snapshot, trigger: str = "start") -> None:
        metrics.POLICY_INFO.labels(revision=snapshot.revision.id).set(1)
        metrics.TENANTS_LOADED.set(len(snapshot.revision.tenants))
        log.info("policy revision %s in force (%s): %d modules, %d tenants", snapshot.revision.id[:12], trigger,
                 len(snapshot.revision.source.modules), len(snapshot.revision.tenants),
                 extra={"event": "reload" if trigger != "start" else "start", "outcome": "ok",
                        "trigger": trigger, "revision": snapshot.revision.id})

    def close(self) -> None:
        self.jwks.close()
        self.audit.close()
