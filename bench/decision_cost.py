"""In-process cost of one decision: request facts + identity + input + evaluation + response.

No network and no audit write: the Checker is called directly with a CheckRequest like the one
Envoy sends for a 1 KB OpenAI chat request with an API key. Prints the median and p99 in µs,
and the median of each step. `--signals` also times the same check for a tenant whose file turns
input.signals on (the credential's history kept in process, the default policy's anomaly rules),
interleaved with the plain one, and prints the difference.

    .venv/bin/python bench/decision_cost.py [--n 3000] [--signals]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llm_authz.check import Checker  # noqa: E402
from llm_authz.config import Config  # noqa: E402
from llm_authz.decision import from_result  # noqa: E402
from llm_authz.facts.payload import extract_payload  # noqa: E402
from llm_authz.facts.request import from_check_request  # noqa: E402
from llm_authz.facts.routes import match_route  # noqa: E402
from llm_authz.input import build_input  # noqa: E402
from llm_authz.response import CheckContext, to_check_response  # noqa: E402
from llm_authz.runtime import load_snapshot  # noqa: E402
from workload import check_request  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--signals", action="store_true", help="also time the check with input.signals on")
    args = parser.parse_args()
    config = Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants")
    snapshot = load_snapshot(config)
    checker = Checker(snapshot, audit=None)
    request = check_request()
    assert checker.check(request).HasField("ok_response"), "the benchmark request must be allowed"

    totals = []
    for _ in range(args.n):
        t0 = time.perf_counter_ns()
        checker.check(request)
        totals.append((time.perf_counter_ns() - t0) / 1000)

    steps: dict[str, list[float]] = {k: [] for k in ("facts", "identity", "input", "evaluate", "response")}
    revision = snapshot.revision
    for _ in range(min(args.n, 1000)):
        t0 = time.perf_counter_ns()
        facts = from_check_request(request)
        route = match_route(facts.method, facts.path)
        payload = extract_payload(facts, route)
        t1 = time.perf_counter_ns()
        identity = snapshot.resolver.resolve(facts)
        t2 = time.perf_counter_ns()
        doc = build_input(facts, route, payload, identity, revision.tenants.get(identity.tenant))
        t3 = time.perf_counter_ns()
        result = revision.engine.evaluate(revision.source.entrypoint, doc)
        t4 = time.perf_counter_ns()
        to_check_response(from_result(result), CheckContext(decision_id="d", request_headers=facts.headers))
        t5 = time.perf_counter_ns()
        for name, (a, b) in zip(steps, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            steps[name].append((b - a) / 1000)

    if args.signals:
        signals_cost(config, request, args.n)
    print(f"in-process decision, API key, 1 KB chat body, n={args.n}:")
    print(f"  median {statistics.median(totals):8.1f} µs   p99 {percentile(totals, 0.99):8.1f} µs")
    for name, values in steps.items():
        print(f"  {name:10} median {statistics.median(values):8.1f} µs")


def signals_cost(config: Config, request, n: int) -> None:
    """The same check with and without `signals:` in the tenant file, interleaved so both see the
    same machine load; the difference is what the signals add per check."""
    import shutil
    import tempfile

    import yaml

    from llm_authz.signals import SignalTracker

    with tempfile.TemporaryDirectory() as tmp:
        tenants = Path(tmp) / "tenants"
        shutil.copytree(config.tenants, tenants)
        acme = tenants / "acme.yaml"
        doc = yaml.safe_load(acme.read_text())
        doc["signals"] = {"action": "flag"}
        acme.write_text(yaml.safe_dump(doc))
        plain = Checker(load_snapshot(config), audit=None, signals=SignalTracker())
        with_signals = Checker(load_snapshot(config.model_copy(update={"tenants": tenants})), audit=None,
                               signals=SignalTracker())
    for checker in (plain, with_signals):
        for _ in range(200):
            assert checker.check(request).HasField("ok_response")
    off: list[float] = []
    on: list[float] = []
    for _ in range(n):
        for checker, out in ((plain, off), (with_signals, on)):
            t0 = time.perf_counter_ns()
            checker.check(request)
            out.append((time.perf_counter_ns() - t0) / 1000)
    print(f"input.signals, API key, 1 KB chat body, n={n} each, interleaved:")
    print(f"  off  median {statistics.median(off):8.1f} µs   p99 {percentile(off, 0.99):8.1f} µs")
    print(f"  on   median {statistics.median(on):8.1f} µs   p99 {percentile(on, 0.99):8.1f} µs")
    print(f"  extra per check: {statistics.median(on) - statistics.median(off):+.1f} µs (median)")


if __name__ == "__main__":
    main()
