"""In-process measurements: µs per decision (Checker.check, no network) and resident memory over a soak.

Run in a process of its own by bench/run.py, with GOGC as `llm-authz serve` sets it:
    python bench/inprocess.py decision --root DIR      → {"api_key_us": ..., "jwt_us": ...}
    python bench/inprocess.py soak --root DIR --checks N [--seconds S] → {"samples": [[checks, rss_mb], ...]}
The audit record of every check is built, serialised and hashed as the audit log does, then
dropped (a million records would be gigabytes of disk): the disk write itself is measured
through Envoy, not here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from workload import check_request

from llm_authz.check import Checker, CheckSettings
from llm_authz.config import Config
from llm_authz.runtime import load_snapshot


class SerialisingSink:
    """Does what the audit log does to a record in memory (serialise, hash), and keeps nothing."""

    def __init__(self) -> None:
        self.records = 0
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        hashlib.sha256(line).hexdigest()
        with self._lock:
            self.records += 1


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def make_checker(root: Path, pool_size: int = 2, audit: Any = "sink") -> Checker:
    """A Checker as `llm-authz serve` builds one (default config: local quotas on), bar the audit sink."""
    config = Config(policies=root / "policies", tenants=root / "tenants", engine_pool_size=pool_size)
    sink = SerialisingSink() if audit == "sink" else audit
    try:
        from llm_authz.quota import make_counter
    except ImportError:  # a revision before quotas (bench/compare.py)
        return Checker(load_snapshot(config), sink, CheckSettings())
    return Checker(load_snapshot(config), sink, CheckSettings(),
                   quota=make_counter(config.quota_backend, config.redis_url))


def allowed(checker: Checker, token: str) -> tuple[bool, str]:
    response = checker.check(check_request(token))
    if response.status.code == 0:
        return True, "allowed"
    body = response.denied_response.body
    try:
        detail = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = body[:200]
    return False, f"{response.denied_response.status.code}: {detail}"


def per_decision_us(checker: Checker, token: str, batches: int = 15, per_batch: int = 300) -> dict[str, Any]:
    """µs per check over batches (each batch timed as a whole), after a warm-up: the median of the
    wall-clock time, and of the process CPU time (all threads, so the Go runtime's collector counts
    too), which a busy machine disturbs much less."""
    request = check_request(token)
    for _ in range(200):
        checker.check(request)
    wall, cpu = [], []
    for _ in range(batches):
        started, started_cpu = time.perf_counter(), time.process_time()
        for _ in range(per_batch):
            checker.check(request)
        wall.append((time.perf_counter() - started) / per_batch * 1e6)
        cpu.append((time.process_time() - started_cpu) / per_batch * 1e6)
    return {"median_us": round(statistics.median(wall), 1), "min_us": round(min(wall), 1),
            "cpu_median_us": round(statistics.median(cpu), 1), "cpu_min_us": round(min(cpu), 1)}


def soak(checker: Checker, token: str, checks: int, threads: int = 1, step: int = 10_000,
         seconds: float = 0.0) -> list[list[float]]:
    """RSS (MB) after every `step` checks, until `checks` are done or `seconds` (if > 0) have passed."""
    request = check_request(token)
    out = [[0, round(rss_mb(), 1)]]
    done = 0
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    while done < checks and time.monotonic() < deadline:
        chunk = min(step, checks - done)
        share = [chunk // threads + (1 if i < chunk % threads else 0) for i in range(threads)]

        def work(n: int) -> None:
            for _ in range(n):
                checker.check(request)

        pool = [threading.Thread(target=work, args=(n,)) for n in share]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        done += chunk
        out.append([done, round(rss_mb(), 1)])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["decision", "soak"])
    ap.add_argument("--root", type=Path, required=True, help="directory with tenants/ and policies/ (bench fixtures)")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--jwt", default="")
    ap.add_argument("--checks", type=int, default=1_000_000)
    ap.add_argument("--pool-size", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.0, help="soak: stop after this long (0: no limit)")
    ap.add_argument("--threads", type=int, default=1, help="soak: threads sharing the checks")
    args = ap.parse_args(argv)
    checker = make_checker(args.root, args.pool_size)
    ok, why = allowed(checker, args.api_key)
    if not ok:
        raise SystemExit(f"the API-key request is not allowed: {why}")
    if args.mode == "decision":
        result: dict[str, Any] = {"api_key": per_decision_us(checker, args.api_key),
                                  "api_key_no_audit": per_decision_us(make_checker(args.root, args.pool_size, None), args.api_key)}
        jwt_ok, jwt_why = allowed(checker, args.jwt) if args.jwt else (False, "no token")
        result["jwt"] = per_decision_us(checker, args.jwt) if jwt_ok else {"skipped": f"JWT path unavailable ({jwt_why})"}
    else:
        started = time.perf_counter()
        samples = soak(checker, args.api_key, args.checks, threads=args.threads, seconds=args.seconds)
        result = {"samples": samples, "seconds": round(time.perf_counter() - started, 1), "target": args.checks,
                  "threads": args.threads}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
