"""The running service's state: config, the revision in force, the audit log; reload swaps it whole."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

from llm_authz import metrics
from llm_authz.audit.chain import MAIN_CHAIN
from llm_authz.audit.writer import AuditLog
from llm_authz.bundle.format import Bundle
from llm_authz.bundle.source import BundleSource
from llm_authz.check import Checker, CheckSettings, Snapshot
from llm_authz.config import Config
from llm_authz.decisionlog.shipper import Shipper
from llm_authz.errors import LlmAuthzError
from llm_authz.urls import loggable_url
from llm_authz.facts import payload as payload_facts
from llm_authz.identity.jwks import JwksRegistry
from llm_authz.identity.resolve import IdentityResolver
from llm_authz.policy import Revision, build_engine, load_bundle_source, load_source
from llm_authz.quota import make_counter
from llm_authz.signals import NetworkLocator, SignalTracker

log = logging.getLogger("llm_authz.runtime")


def load_snapshot(config: Config, jwks: JwksRegistry | None = None, bundle: Bundle | None = None) -> Snapshot:
    """Read, validate and compile policies and tenants. Raises PolicyLoadError naming every problem.

    `jwks` keeps the remote key sets (and their caches) across reloads; a new one is made if not given.
    With `bundle`, policies and data come from it (and tenants too when it holds data.tenants).
    """
    files_dir = None
    try:
        if bundle is not None:
            files_dir = Path(tempfile.mkdtemp(prefix="llm-authz-bundle-"))
            source, tenants = load_bundle_source(bundle, config.tenants, config.entrypoint, files_dir)
        else:
            source, tenants = load_source(config.policies, config.tenants, config.entrypoint)
        resolver = IdentityResolver.from_tenants(tenants, config, jwks or JwksRegistry(config.jwks))
        engine = build_engine(source, config.engine, config.opa_url, config.engine_pool_size, config.opa_push)
    except BaseException:
        if files_dir is not None:
            shutil.rmtree(files_dir, ignore_errors=True)
        raise
    revision = Revision(source=source, engine=engine, tenants=tenants,
                        bundle_revision=bundle.revision if bundle is not None else None, files_dir=files_dir)
    return Snapshot(revision=revision, resolver=resolver)


class Runtime:
    def __init__(self, config: Config, chain_name: str = "main"):
        self.config = config
        payload_facts.envoy_max_request_bytes = config.envoy_max_request_bytes
        self._reload_lock = threading.Lock()
        self.jwks = JwksRegistry(config.jwks)
        self.bundle_source: BundleSource | None = None
        self._bundle: Bundle | None = None
        etag = None
        if config.bundle:
            self.bundle_source = BundleSource(config.bundle, config.bundle_public_key, config.bundle_poll_seconds)
            self._bundle, etag = self.bundle_source.read()
        snapshot = load_snapshot(config, self.jwks, self._bundle)
        if config.decision_log_url:  # retention must not prune what the shipper has yet to deliver
            from llm_authz.audit.retention import hold
            from llm_authz.decisionlog.shipper import CURSOR_NAME

            hold(config.audit_dir, CURSOR_NAME)
        self.audit = AuditLog.from_config(config, chain_name)
        self.audit.archive_revision(snapshot.revision.source, snapshot.revision.bundle_revision)
        self.checker = Checker(snapshot, self.audit, CheckSettings(
            max_json_depth=config.max_json_depth, dry_run=config.dry_run,
            audit_masks=tuple(config.audit_masks),
            raw_credentials=config.raw_credentials_for(config.entrypoint),
            unauthenticated_body_bytes=config.unauthenticated_body_bytes),
            quota=make_counter(config.quota_backend, config.redis_url, config.redis_prefix),
            signals=SignalTracker(NetworkLocator.from_file(config.signals_networks)))
        self._announce(snapshot)
        if self.bundle_source is not None:
            self.bundle_source.etag = etag
            self.bundle_source.start_polling(self.activate_bundle)
        self.shipper: Shipper | None = None
        if config.decision_log_url and self.audit.chain == MAIN_CHAIN:  # one shipper per audit directory
            self.shipper = Shipper(config.audit_dir, config.decision_log_url)
            self.shipper.start()

    @property
    def snapshot(self) -> Snapshot:
        return self.checker.snapshot

    def activate_bundle(self, bundle: Bundle) -> bool:
        """Put a newly downloaded (already verified) bundle in force; False keeps the one in force."""
        return self.reload("bundle", bundle)

    def reload(self, trigger: str = "signal", bundle: Bundle | None = None) -> bool:
        """Load policies and tenants again; keep the revision in force if the new one is invalid.

        `trigger` (signal, watch, bundle, ...) only says in the log line what asked for the reload.
        With --bundle: a file or directory is read again; a URL's bundle in force is kept (the
        poller brings new ones, passing `bundle`).
        """
        with self._reload_lock:
            try:
                if bundle is None and self.bundle_source is not None:
                    bundle = self._bundle if self.bundle_source.remote else self.bundle_source.read()[0]
                snapshot = load_snapshot(self.config, self.jwks, bundle)
                self.audit.archive_revision(snapshot.revision.source, snapshot.revision.bundle_revision)
            except LlmAuthzError as exc:
                self.jwks.retain(self.snapshot.resolver.jwks_urls)
                metrics.POLICY_RELOADS.labels(outcome="error").inc()
                log.error("reload (%s) refused, keeping revision %s: %s", trigger, self.snapshot.revision.id[:12],
                          exc, extra={"event": "reload", "outcome": "error", "trigger": trigger,
                                      "revision": self.snapshot.revision.id})
                return False
            old = self.checker.snapshot
            self.checker.snapshot = snapshot
            self._bundle = bundle
            self.jwks.retain(snapshot.resolver.jwks_urls)
            metrics.POLICY_RELOADS.labels(outcome="ok").inc()
            metrics.POLICY_INFO.labels(revision=old.revision.id).set(0)  # what other processes read
            metrics.POLICY_INFO.remove(old.revision.id)
            if old.revision.bundle_revision is not None:
                metrics.BUNDLE_REVISION.labels(revision=old.revision.bundle_revision).set(0)
                metrics.BUNDLE_REVISION.remove(old.revision.bundle_revision)
            self._announce(snapshot, trigger)
            # Checks that already read the old snapshot may still be evaluating: close it later.
            threading.Timer(30.0, old.revision.close).start()
            return True

    def _announce(self, snapshot: Snapshot, trigger: str = "start") -> None:
        metrics.POLICY_INFO.labels(revision=snapshot.revision.id).set(1)
        metrics.TENANTS_LOADED.set(len(snapshot.revision.tenants))
        if snapshot.revision.bundle_revision is not None:
            metrics.BUNDLE_REVISION.labels(revision=snapshot.revision.bundle_revision).set(1)
            metrics.BUNDLE_LOADED_AT.set(time.time())
            log.info("bundle revision %r in force (%s)", snapshot.revision.bundle_revision, loggable_url(str(self.config.bundle)))
        log.info("policy revision %s in force (%s): %d modules, %d tenants", snapshot.revision.id[:12], trigger,
                 len(snapshot.revision.source.modules), len(snapshot.revision.tenants),
                 extra={"event": "reload" if trigger != "start" else "start", "outcome": "ok",
                        "trigger": trigger, "revision": snapshot.revision.id})

    def close(self) -> None:
        if self.shipper is not None:
            self.shipper.close()
        if self.bundle_source is not None:
            self.bundle_source.close()
        self.jwks.close()
        self.audit.close()
