"""Throughput at saturation (wrk) and latency at fixed rates for several llm-authz variants, alternated.

Each variant is an llm-authz (its own flags and environment) behind its own Envoy; every round
runs wrk against each in turn, then the open-loop client at each --rates value. Used to decide a
default (for example the audit commit window) on numbers from the same machine at the same time.

    python bench/variants.py --rounds 3 "w1:--config w1.yaml" "w0:--config w0.yaml"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "service"))

import fixtures  # noqa: E402
import run  # noqa: E402
from server_cpu import start_variant, stop_variants  # noqa: E402
from workload import chat_body  # noqa: E402



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="NAME[:FLAGS and env=K=V ...]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rates", default="", help="fixed rates to measure latency at, e.g. 250,500")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    wrk = run.ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="llm-authz-variants-"))
    fx = fixtures.make(work / "fixtures")
    body = chat_body()
    running = []
    try:
        for i, spec in enumerate(args.variants):
            running.append({**start_variant(spec, work / f"v{i}", fx, body), "rps": [],
                            "latency": {r: [] for r in rates}})
        for v in running:  # warm-up
            run.saturation(wrk, v["ingress"], v["script"], 1.0, args.connections)
        for rnd in range(args.rounds):
            for v in running:
                out = run.saturation(wrk, v["ingress"], v["script"], args.duration, args.connections)
                v["rps"].append(out.get("rps") or 0)
                run.log(f"round {rnd + 1} {v['name']}: {out.get('rps')} checks/s, non-2xx {out.get('non_2xx')}")
                for rate in rates:
                    lat = run.fixed_rate(v["ingress"], v["request"], rate, args.duration, 1.0)
                    v["latency"][rate].append(lat)
                    run.log(f"round {rnd + 1} {v['name']} at {rate:.0f}/s: p50 {lat.get('p50_ms')} ms, "
                            f"p99 {lat.get('p99_ms')} ms")
    finally:
        stop_variants(running)
    report = {}
    for v in running:
        report[v["name"]] = {"checks_per_s_median": round(statistics.median(v["rps"])), "rounds": v["rps"]}
        for rate, outs in v["latency"].items():
            report[v["name"]][f"at_{rate:.0f}"] = {
                "p50_ms_median": statistics.median(o.get("p50_ms") or 0 for o in outs),
                "p99_ms_median": statistics.median(o.get("p99_ms") or 0 for o in outs)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
