"""Server CPU per check through a real Envoy at a fixed rate, for several server variants, alternated.

Throughput at saturation swings with whatever else the shared machine runs; the CPU the server
spends per check at a rate it can sustain swings much less. Each variant is an llm-authz (with
its own flags and environment) behind its own Envoy; every round drives each variant in turn with
the open-loop client at --rate for --duration seconds and reads the server's CPU time (user +
system, the supervisor and its workers included) from /proc before and after.

    python bench/server_cpu.py --rate 150 --duration 8 --rounds 3 \
        default "gomaxprocs1:env=GOMAXPROCS=1" "workers4:--workers 4" "processes2:--processes 2"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "service"))

import fixtures  # noqa: E402
import run  # noqa: E402
from workload import chat_body  # noqa: E402

from llm_authz.demo import processes  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its children (one level: the supervisor's workers)."""
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def parse_variant(spec: str) -> tuple[str, list[str], dict[str, str]]:
    name, _, rest = spec.partition(":")
    args: list[str] = []
    env: dict[str, str] = {}
    for part in shlex.split(rest):
        if part.startswith("env="):
            key, _, value = part[4:].partition("=")
            env[key] = value
        else:
            args.append(part)
    return name, args, env


def start_variant(spec: str, home: Path, fx: fixtures.Fixtures, body: bytes) -> dict[str, Any]:
    """One variant (NAME[:FLAGS and env=K=V ...]): llm-authz behind its own Envoy, ready, with the
    request files the load generators send."""
    name, extra, env = parse_variant(spec)
    port, metrics, ingress, admin = (processes.free_port() for _ in range(4))
    home.mkdir()
    authz = processes.start_llm_authz(
        ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}", "--tenants",
         str(fx.tenants), "--policies", str(fx.policies), "--audit-dir", str(home / "audit"),
         "--log-level", "warning", *extra], home, env={"GOGC": "400", **env})
    variant = {"name": name, "authz": authz, "ingress": ingress, "metrics": metrics}
    try:
        processes.wait_for_port(metrics, timeout=120, proc=authz)
        processes.wait_for_port(port, timeout=120, proc=authz)
        variant["envoy"] = processes.start_envoy(run.envoy_config(ingress, admin, port), home)
        processes.wait_envoy_ready(admin)
    except BaseException:
        stop_variants([variant])
        raise
    variant["request"] = home / "request.bin"
    variant["request"].write_bytes(run.raw_request(fx.api_key, body, ingress))
    variant["script"] = home / "wrk.lua"
    variant["script"].write_text(run.wrk_script(fx.api_key, body))
    return variant


def stop_variants(running: list[dict[str, Any]]) -> None:
    for v in running:
        if "envoy" in v:
            processes.stop(v["envoy"])
        processes.stop(v["authz"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="NAME[:FLAGS and env=K=V ...]")
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llm-authz-server-cpu-"))
    fx = fixtures.make(work / "fixtures")
    body = chat_body()
    running = []
    try:
        for i, spec in enumerate(args.variants):
            running.append({**start_variant(spec, work / f"v{i}", fx, body), "us": []})
        for v in running:  # warm-up
            run.fixed_rate(v["ingress"], v["request"], args.rate, 2.0, 0.5)
        for rnd in range(args.rounds):
            for v in running:
                cpu0, t0 = tree_cpu_seconds(v["authz"].pid), time.monotonic()
                out = run.fixed_rate(v["ingress"], v["request"], args.rate, args.duration, 0.0)
                cpu = tree_cpu_seconds(v["authz"].pid) - cpu0
                done = sum(int(n) for n in (out.get("statuses") or {}).values())
                us = cpu / max(done, 1) * 1e6
                v["us"].append(us)
                run.log(f"round {rnd + 1} {v['name']}: {us:,.0f} CPU µs per check ({done} checks, "
                        f"{time.monotonic() - t0:.1f} s, p50 {out.get('p50_ms')} ms, p99 {out.get('p99_ms')} ms, "
                        f"statuses {out.get('statuses')}, load {os.getloadavg()[0]:.1f})")
    finally:
        stop_variants(running)
    report = {v["name"]: {"median_cpu_us": round(statistics.median(v["us"])), "rounds": [round(x) for x in v["us"]]}
              for v in running}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
