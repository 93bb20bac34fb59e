"""In-process cost of one Check by credential type: a JWT (RS256, ES256, EdDSA) and an API key.

Runs the whole `Checker.check` (facts, identity, input, embedded OPA, response) on one thread,
without the audit log (its cost is measured apart), and the identity step alone. Keys and
tokens are made here; nothing leaves the process.

    .venv/bin/python bench/identity_bench.py [--runs 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llm_authz.check import Checker  # noqa: E402
from llm_authz.config import Config  # noqa: E402
from llm_authz.facts.request import from_check_request  # noqa: E402
from llm_authz.runtime import load_snapshot  # noqa: E402
from tests.conftest import ACME_KEY  # noqa: E402
from tests.helpers import check_request  # noqa: E402
from tests.identity_fixtures import ISSUER, claims, new_key, write_jwks  # noqa: E402

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello in three words."}], "max_tokens": 64}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(fn, runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    cpu0 = time.process_time_ns()
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    cpu_mean = (time.process_time_ns() - cpu0) / runs / 1000  # all threads: steadier on a busy machine
    return {"median_us": round(statistics.median(samples), 1), "p90_us": round(percentile(samples, 0.90), 1),
            "p99_us": round(percentile(samples, 0.99), 1), "cpu_mean_us": round(cpu_mean, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="identity-bench-"))
    try:
        shutil.copytree(REPO / "tenants", tmp / "tenants")
        keys = {"RS256": new_key("RS256", kid="rs"), "ES256": new_key("ES256", kid="es"),
                "EdDSA": new_key("EdDSA", kid="ed")}
        write_jwks(tmp / "tenants" / "keys" / "bench.jwks.json", *keys.values())
        acme = tmp / "tenants" / "acme.yaml"
        acme.write_text(acme.read_text().replace("https://idp.acme.example", ISSUER)
                        .replace("keys/acme.jwks.json", "keys/bench.jwks.json"))
        snapshot = load_snapshot(Config(tenants=tmp / "tenants", policies=REPO / "policies" / "rego"))
        checker = Checker(snapshot, audit=None)
        cases = {f"jwt {alg}": {"authorization": f"Bearer {key.sign(claims(lifetime=3600))}"}
                 for alg, key in keys.items()}
        cases["api key"] = {"authorization": f"Bearer {ACME_KEY}"}
        results = {}
        for name, headers in cases.items():
            request = check_request(headers=headers, body=BODY, source="127.0.0.1")
            response = checker.check(request)
            assert response.HasField("ok_response"), f"{name}: not allowed"
            facts = from_check_request(request)
            results[name] = {
                "check": measure(lambda: checker.check(request), args.runs, args.warmup),
                "identity": measure(lambda: snapshot.resolver.resolve(facts), args.runs, args.warmup),
            }
            assert checker.check(request).HasField("ok_response"), f"{name}: denied during the run"
        snapshot.revision.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps({"runs": args.runs, "results": results}, indent=2))
        return 0
    print(f"Checker.check in-process, one thread, no audit log; {args.runs} runs after {args.warmup} warm-up")
    print("(wall-clock median, p90, p99; CPU time per call, all threads, averaged; the identity step alone)")
    print(f"{'credential':<12} {'check median':>13} {'p90':>10} {'p99':>10} {'check CPU':>11}"
          f"   {'identity median':>16} {'identity CPU':>13}")
    for name, r in results.items():
        c, i = r["check"], r["identity"]
        print(f"{name:<12} {c['median_us']:>10.1f} µs {c['p90_us']:>7.1f} µs {c['p99_us']:>7.1f} µs"
              f" {c['cpu_mean_us']:>8.1f} µs   {i['median_us']:>13.1f} µs {i['cpu_mean_us']:>10.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
