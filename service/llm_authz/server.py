"""gRPC wiring: envoy.service.auth.v3.Authorization, grpc.health.v1 and reflection; start and stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llm_authz import metrics
from llm_authz.audit.chain import worker_chain
from llm_authz.config import Config
from llm_authz.metrics import serve_metrics
from llm_authz.runtime import Runtime
from llm_authz.tls import ReloadingServerCredentials, TlsFiles
from llm_authz.watch import DirectoryWatcher

log = logging.getLogger("llm_authz.server")
AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, runtime: Runtime, deadline_ms: int):
        self.runtime = runtime
        self.deadline_s = deadline_ms / 1000.0

    def Check(self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext) -> external_auth_pb2.CheckResponse:  # noqa: N802
        budget = self.deadline_s
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        return self.runtime.checker.check(request, deadline=time.monotonic() + budget)


def watched_paths(config: Config) -> list[Path]:
    """What --watch watches: the tenants, and the policies, or the bundle when it is a local path
    (a bundle URL is polled instead)."""
    if config.bundle is None:
        return [config.policies, config.tenants]
    if "://" in config.bundle:
        return [config.tenants]
    return [Path(config.bundle), config.tenants]


class Server:
    """One process answering checks. `worker` i of `serve --processes N` writes audit chain w<i> (0: main)
    and leaves the metrics port to the supervisor (`own_metrics=False`)."""

    def __init__(self, config: Config, worker: int = 0, own_metrics: bool = True):
        self.config = config
        self.own_metrics = own_metrics
        self.runtime = Runtime(config, worker_chain(worker))
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 1),
        ]
        # Unlimited unless set: a limit makes the gRPC server refuse the streams a client opens past
        # it (Envoy then answers 503, a denied request), which happens under load whenever a stream
        # ends and the next one starts before the server has counted the first one out.
        if config.grpc_max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", config.grpc_max_concurrent_streams))
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers), options=options)
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationService(self.runtime, config.check_deadline_ms), self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (AUTHZ_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.grpc)
        if config.tls_cert is not None and config.tls_key is not None:
            tls = ReloadingServerCredentials(TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca))
            self.port = self.grpc.add_secure_port(config.listen, tls.credentials())
        else:
            self.port = self.grpc.add_insecure_port(config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        # Kubernetes gRPC probes speak plaintext only: with TLS on the main port they need this one.
        self.health_grpc: grpc.Server | None = None
        if config.health_listen:
            self.health_grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_grpc)
            if self.health_grpc.add_insecure_port(config.health_listen) == 0:
                raise OSError(f"cannot listen on {config.health_listen}")
        self.watcher = (DirectoryWatcher(watched_paths(config), lambda: self.runtime.reload(trigger="watch"))
                        if config.watch else None)
        metrics.initialise()
        self._stopped = threading.Event()

    def start(self) -> None:
        self.grpc.start()
        if self.health_grpc is not None:
            self.health_grpc.start()
        if self.watcher is not None:
            self.watcher.start()
        if self.own_metrics:
            serve_metrics(self.config.metrics_listen)
        for service in ("", AUTHZ_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("llm-authz serving on %s%s (metrics on %s), pid %d; reload: %s", self.config.listen,
                 " with TLS" + (" (client certificates required)" if self.config.tls_client_ca else "")
                 if self.config.tls_cert else "", self.config.metrics_listen, os.getpid(),
                 "on file change or SIGHUP" if self.config.watch else "SIGHUP")

    def stop(self) -> None:
        """Stop taking checks, finish the ones in flight, then close the audit log."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if self.watcher is not None:
            self.watcher.stop()
        self.grpc.stop(self.config.shutdown_grace_seconds).wait()
        if self.health_grpc is not None:
            self.health_grpc.stop(0).wait()
        self.runtime.close()
        log.info("llm-authz stopped")

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        self.start()
        done = threading.Event()

        def on_term(signum: int, _frame: object) -> None:
            log.info("signal %d: shutting down", signum)
            done.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(
            target=self.runtime.reload, kwargs={"trigger": "signal"}, daemon=True).start())
        if on_ready is not None:
            on_ready()
        done.wait()
        self.stop()
