"""The `opa` engine's client on the check path: httpx (what the engine uses) against opa-python-client.

Both query the same OPA stand-in (tests/opa_stand_in.py: OPA's REST API over the embedded
engine, HTTP/1.1 keep-alive) loaded with the default policy and tenants, with the same ~1 KB
input. Measured: latency one at a time, throughput and latency with 16 threads (the service's
check threads share one client), connections opened, and how long a check waits when the OPA
server is down. opa-python-client is not a dependency: `pip install opa-python-client==3.0.0`
to run its half.

    .venv/bin/python bench/opa_client_bench.py [--n 2000] [--threads 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llm_authz.bundle import read_bundle  # noqa: E402
from llm_authz.bundle.build import build  # noqa: E402
from llm_authz.demo.processes import free_port  # noqa: E402
from llm_authz.engine.opa import OpaServerEngine  # noqa: E402
from tests.opa_stand_in import OpaStandIn  # noqa: E402

QUERY = "data.llm.authz.decision"
INPUT: dict[str, Any] = {
    "request": {"method": "POST", "path": "/v1/chat/completions", "host": "api.example.com", "scheme": "https",
                "headers": {"content-type": "application/json", "user-agent": "bench/1.0",
                            "x-request-id": "7f1c0e2a-9b7d-4e58-a1b2-c3d4e5f60718"},
                "source": {"address": "10.0.0.7"}},
    "identity": {"tenant": "acme", "subject": "ak_acme_1", "kind": "api_key", "scopes": ["inference:invoke"],
                 "credential_id": "ak_acme_1"},
    "route": {"api": "openai", "operation": "chat", "model": "gpt-4o"},
    "payload": {"model": "gpt-4o", "max_tokens": 256, "stream": False, "bytes": 1024,
                "messages": [{"role": "system", "content": "Answer questions from the finance team briefly."},
                             {"role": "user", "content": "Summarise the quarterly figures for the board. " * 12}]},
    "quota": {"requests_this_minute": 3, "tokens_this_minute": 900},
}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(name: str, call: Callable[[], Any], n: int, threads: int, standin: OpaStandIn) -> dict[str, float]:
    for _ in range(50):
        call()
    seq = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        seq.append((time.perf_counter() - t) * 1e6)
    conns_before = standin.connections
    lat: list[float] = []
    lock = threading.Lock()
    per = n // threads

    def worker() -> None:
        mine = []
        for _ in range(per):
            t = time.perf_counter()
            call()
            mine.append((time.perf_counter() - t) * 1e6)
        with lock:
            lat.extend(mine)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - started
    result = {"seq_p50_us": statistics.median(seq), "seq_p99_us": pct(seq, 0.99),
              f"conc{threads}_per_s": per * threads / elapsed, f"conc{threads}_p50_us": statistics.median(lat),
              f"conc{threads}_p99_us": pct(lat, 0.99), "connections_opened": standin.connections - conns_before}
    print(f"{name:22} " + "  ".join(f"{k}={v:,.0f}" for k, v in result.items()), flush=True)
    return result


def down_wait(call: Callable[[], Any]) -> float:
    t = time.perf_counter()
    try:
        call()
    except Exception:  # noqa: BLE001 - any error is the point
        pass
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "b.tar.gz"
        build([REPO / "policies" / "rego"], out, tenants_dir=REPO / "tenants")
        bundle = read_bundle(out)
    standin = OpaStandIn(bundle.modules, bundle.data)
    host, port = standin.url.removeprefix("http://").split(":")

    engine = OpaServerEngine(standin.url, {}, {}, timeout=1.0)
    assert isinstance(engine.evaluate(QUERY, INPUT), dict)
    run("httpx (engine)", lambda: engine.evaluate(QUERY, INPUT), args.n, args.threads, standin)
    try:
        from opa_client import OpaClient
    except ImportError:
        print("opa-python-client not installed: pip install opa-python-client==3.0.0")
        OpaClient = None  # noqa: N806
    if OpaClient is not None:
        client = OpaClient(host=host, port=int(port), timeout=1.0)
        call = lambda: client.query_rule(INPUT, "llm.authz", "decision",  # noqa: E731
                                         query_params={"strict-builtin-errors": "true"})
        assert "result" in call()
        run("opa-python-client", call, args.n, args.threads, standin)

    dead = f"http://127.0.0.1:{free_port()}"
    down = OpaServerEngine(dead, {}, {}, timeout=1.0)
    print(f"OPA down: httpx engine gives up after {down_wait(lambda: down.evaluate(QUERY, INPUT)):.1f} ms")
    if OpaClient is not None:
        dead_client = OpaClient(host="127.0.0.1", port=int(dead.rsplit(':', 1)[1]), timeout=1.0)
        waited = down_wait(lambda: dead_client.query_rule(INPUT, "llm.authz", "decision"))
        print(f"OPA down: opa-python-client gives up after {waited:.1f} ms (its default retries=2 with backoff)")
    standin.close()


if __name__ == "__main__":
    main()
