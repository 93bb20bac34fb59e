"""Decision-log shipping: throughput (records/s) and lag under the `make bench` load.

The stack is make bench's configuration c: a real Envoy (direct response) → llm-authz (API key,
fsync audit log, embedded OPA, example tenants and policy), here with --decision-log-url
pointing at a collector process (tests/decision_log_collector.py: gunzips, parses, fsyncs every
event before answering). Load is bench/loadgen.py at a constant rate.

1. Lag under load: at each rate, llm_authz_decision_log_lag_seconds (age of the oldest decision
   not yet delivered) is sampled every 100 ms; p50/p95/max are reported, and the time to catch up
   once the load stops.
2. Throughput: the collector is stopped while load builds a backlog, then started again; from
   the first batch it takes (the shipper is backing off until then), the records left divided by
   the time until they are delivered (llm_authz_decision_log_events_total) is the shipping rate,
   with the service otherwise idle.

    .venv/bin/python bench/decision_log_bench.py [--rates 250,500] [--duration 10] [--backlog-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(BENCH))

import fixtures  # noqa: E402
from run import envoy_config, fixed_rate, raw_request  # noqa: E402
from workload import chat_body  # noqa: E402

from llm_authz.demo import processes  # noqa: E402


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def collector(port: int, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tests.decision_log_collector", str(port), str(out)], cwd=REPO)
    processes.wait_for_port(port, proc=proc)
    return proc


def sample_lag(metrics_port: int, stop: threading.Event, into: list[float]) -> None:
    while not stop.is_set():
        try:
            into.append(metric(metrics_port, "llm_authz_decision_log_lag_seconds"))
        except httpx.HTTPError:
            pass
        stop.wait(0.1)


def wait_caught_up(metrics_port: int, target: float, timeout: float = 300) -> float:
    started = time.monotonic()
    while metric(metrics_port, "llm_authz_decision_log_events_total") < target:
        if time.monotonic() - started > timeout:
            raise SystemExit("the shipper did not catch up")
        time.sleep(0.05)
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="250,500")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--backlog-seconds", type=float, default=10.0)
    ap.add_argument("--backlog-rate", type=float, default=500.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llm-authz-dlbench-"))
    fx = fixtures.make(work / "fixtures")
    cport, authz_port, metrics_port, ingress, admin = (processes.free_port() for _ in range(5))
    received = work / "received.jsonl"
    coll = collector(cport, received)
    (work / "authz").mkdir()
    authz = processes.start_llm_authz(
        ["--listen", f"127.0.0.1:{authz_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
         "--tenants", str(fx.tenants), "--policies", str(fx.policies), "--audit-dir", str(work / "audit"),
         "--decision-log-url", f"http://127.0.0.1:{cport}/logs", "--log-level", "warning"], work / "authz")
    envoy = None
    results: dict[str, object] = {}
    try:
        processes.wait_for_port(authz_port, timeout=60, proc=authz)
        (work / "envoy").mkdir()
        envoy = processes.start_envoy(envoy_config(ingress, admin, authz_port), work / "envoy")
        processes.wait_envoy_ready(admin)
        request = work / "request.bin"
        request.write_bytes(raw_request(fx.api_key, chat_body(), ingress))
        fixed_rate(ingress, request, 100, 2, 0.5)  # warm up

        for rate in [float(r) for r in args.rates.split(",") if r]:
            lags: list[float] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_lag, args=(metrics_port, stop, lags))
            sampler.start()
            load = fixed_rate(ingress, request, rate, args.duration, 1.0)
            checks = metric(metrics_port, "llm_authz_checks_total")
            catch_up = wait_caught_up(metrics_port, checks)
            stop.set()
            sampler.join()
            lags.sort()
            row = {"rate": rate, "achieved_rps": load.get("achieved_rps"), "check_p99_ms": load.get("p99_ms"),
                   "lag_p50_s": statistics.median(lags), "lag_p95_s": lags[int(0.95 * (len(lags) - 1))],
                   "lag_max_s": lags[-1], "catch_up_after_load_s": round(catch_up, 3)}
            results[f"lag_at_{int(rate)}"] = row
            print(json.dumps(row), flush=True)

        # Throughput: a backlog built while the collector is down, then drained.
        coll.terminate()
        coll.wait(10)
        shipped_before = metric(metrics_port, "llm_authz_decision_log_events_total")
        fixed_rate(ingress, request, args.backlog_rate, args.backlog_seconds, 0.5)
        checks = metric(metrics_port, "llm_authz_checks_total")
        backlog = checks - shipped_before
        time.sleep(1.0)
        coll = collector(cport, received)
        # The shipper is backing off (up to 30 s) while the collector is down: time the drain from
        # the first batch the collector takes.
        retry_wait = wait_caught_up(metrics_port, shipped_before + 1)
        first = metric(metrics_port, "llm_authz_decision_log_events_total")
        drain = wait_caught_up(metrics_port, checks)
        row = {"backlog_records": int(backlog), "backoff_wait_seconds": round(retry_wait, 3),
               "drained_after_first_batch": int(checks - first), "drain_seconds": round(drain, 3),
               "records_per_second": round((checks - first) / drain, 1) if drain else None}
        results["throughput"] = row
        print(json.dumps(row), flush=True)
        ids = [json.loads(line)["decision_id"] for line in received.read_text().splitlines()]
        results["delivered"] = {"events": len(ids), "distinct": len(set(ids))}
        print(json.dumps(results["delivered"]), flush=True)
    finally:
        processes.stop(envoy)
        processes.stop(authz)
        coll.terminate()
        coll.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
