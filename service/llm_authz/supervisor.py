"""`serve --processes N`: N worker processes answering on one port, each with its own audit chain.

One Python process is held to about one core by its interpreter lock; N processes use N. Every
worker binds the same address with SO_REUSEPORT, and the kernel hands each new connection to one
of them. Envoy opens one HTTP/2 connection per upstream host per worker thread, so the spreading
is Envoy's: deploy/envoy/envoy.yaml replaces each connection to llm-authz after 1000 checks
(`max_requests_per_connection`), and each new connection lands on a process of the kernel's
choosing. The workers advertise no stream limit: a server-side limit makes gRPC refuse the streams
Envoy opens past it under load, and Envoy answers those requests 500. docs/scaling.md has the figures.

Worker i writes audit chain `w<i>` (worker 0 writes `main`) in the one audit directory
(docs/audit.md "Layout"); `audit verify`, `audit export` and `replay` read the directory as one log.

The supervisor answers no check and loads no policy. It starts the workers (spawned: a fresh
interpreter and Go runtime each), serves the metrics of all of them on the one metrics port
(prometheus_client's multiprocess mode: counters and histograms are summed), forwards SIGHUP
(reload) to every worker, and SIGTERM/SIGINT (drain, close the chain, stop). Each worker runs its
own file watcher (`--watch`), so a policy change reaches every process. A worker that dies is
started again (its chain recovers as after any crash); one that cannot start stops the service.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from llm_authz.config import Config
from llm_authz.errors import ConfigError

log = logging.getLogger("llm_authz.supervisor")

START_TIMEOUT_SECONDS = 120.0
RESTART_BACKOFF_SECONDS = (1.0, 30.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class WorkerStartError(Exception):
    """A worker process could not start (its policies, tenants, port or audit chain): the service stops."""


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, even by SIGKILL, so no worker outlives it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(config: Config, index: int, setup_logging: Callable[[], None], ready: Connection) -> None:
    """A worker's life: build the server (policies, tenants, its audit chain), say ready, serve until told."""
    from llm_authz.errors import LlmAuthzError
    from llm_authz.server import Server

    _die_with_parent()
    setup_logging()
    try:
        server = Server(config, worker=index, own_metrics=False)
    except (LlmAuthzError, OSError) as exc:
        ready.send(("error", str(exc)))
        raise SystemExit(1) from None
    server.serve_forever(on_ready=lambda: ready.send(("ready", os.getpid())))


@dataclass
class _Worker:
    index: int
    process: Any = None
    ready: Connection | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, config: Config, setup_logging: Callable[[], None]):
        if config.processes < 2:
            raise ConfigError("the supervisor is for processes >= 2")
        host, _, port = config.listen.rpartition(":")
        if not port.isdigit() or int(port) == 0:
            raise ConfigError(f"listen {config.listen!r}: several processes need a fixed port to share")
        self.config = config
        self.setup_logging = setup_logging
        self.context = multiprocessing.get_context("spawn")
        self.workers = [_Worker(i) for i in range(config.processes)]
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="llm-authz-metrics-"))
        self._signals: list[int] = []
        self._metrics_server: Any = None

    # ---- running -------------------------------------------------------------------------------

    def serve_forever(self) -> int:
        """Start the workers, then supervise until SIGTERM/SIGINT. Returns the exit code."""
        os.environ[MULTIPROC_ENV] = str(self.metrics_dir)  # read by each worker's prometheus_client
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda n, _f: self._signals.append(n))
        try:
            try:
                for worker in self.workers:
                    self._start(worker)
                for worker in self.workers:
                    self._await_ready(worker)
            except WorkerStartError as exc:
                log.error("cannot start: %s", exc)
                return 1
            self._serve_metrics()
            log.info("llm-authz serving on %s with %d processes (pids %s), metrics on %s", self.config.listen,
                     len(self.workers), ", ".join(str(w.process.pid) for w in self.workers),
                     self.config.metrics_listen)
            return self._loop()
        finally:
            self._stop_all()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _loop(self) -> int:
        while True:
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading every worker")
                    self._forward(signal.SIGHUP)
                else:
                    log.info("signal %d: shutting down", signum)
                    return 0
            sentinels = [w.process.sentinel for w in self.workers if w.process is not None]
            wait(sentinels, timeout=0.2)
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is not None and not worker.process.is_alive():
                    self._reap(worker)
                if worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
                    try:
                        self._start(worker)
                        self._await_ready(worker)
                    except WorkerStartError as exc:
                        log.error("worker %d could not start again: %s", worker.index, exc)
                        if worker.process is not None and worker.process.is_alive():
                            worker.process.kill()
                        self._reap(worker)

    def _start(self, worker: _Worker) -> None:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=worker_main, name=f"llm-authz-worker-{worker.index}",
                                       args=(self.config, worker.index, self.setup_logging, send), daemon=False)
        process.start()
        send.close()
        worker.process, worker.ready, worker.started_at, worker.restart_at = process, receive, time.monotonic(), None
        worker.pids.append(process.pid)

    def _await_ready(self, worker: _Worker) -> None:
        assert worker.ready is not None
        deadline = worker.started_at + START_TIMEOUT_SECONDS
        try:
            while not worker.ready.poll(0.2):
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"worker {worker.index} not ready after {START_TIMEOUT_SECONDS:.0f} s")
                if self._signals and self._signals[0] in (signal.SIGTERM, signal.SIGINT):
                    raise WorkerStartError("stopped while starting")
            status, detail = worker.ready.recv()
        except (EOFError, OSError):
            status, detail = "error", f"exited with {worker.process.exitcode if worker.process else '?'}"
        finally:
            worker.ready.close()
            worker.ready = None
        if status != "ready":
            raise WorkerStartError(f"worker {worker.index}: {detail}")

    def _reap(self, worker: _Worker) -> None:
        """A worker ended without being told to: note it and schedule a new one (backing off)."""
        process, worker.process = worker.process, None
        if process is not None:
            process.join(1)
            self._forget(process.pid)
            log.error("worker %d (pid %s) exited with %s; starting it again", worker.index, process.pid,
                      process.exitcode)
        lived = time.monotonic() - worker.started_at
        worker.failures = 0 if lived > 60 else worker.failures + 1
        low, high = RESTART_BACKOFF_SECONDS
        worker.restart_at = time.monotonic() + min(high, low * (2 ** max(0, worker.failures - 1)))

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive() and worker.ready is None:
                try:
                    os.kill(worker.process.pid, signum)
                except ProcessLookupError:
                    pass

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains its checks and closes its chain), then wait; SIGKILL what hangs."""
        running = [w.process for w in self.workers if w.process is not None]
        for process in running:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace_seconds + 30
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %d did not stop in time: killing it", process.pid)
                process.kill()
                process.join(5)
        for worker in self.workers:
            worker.process = None

    # ---- metrics -------------------------------------------------------------------------------

    def _serve_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))
        host, _, port = self.config.metrics_listen.rpartition(":")
        self._metrics_server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)

    def _forget(self, pid: int | None) -> None:
        """Drop a dead worker's live gauges (its counters stay: totals do not go backwards)."""
        if pid is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.metrics_dir))
