"""How long a watched change takes to apply: a policy directory laid out as the kubelet lays out a
ConfigMap volume, swapped the way the kubelet swaps it (`..data` renamed over), and the time from
the swap to the first request through Envoy that the new revision decides.

    .venv/bin/python bench/watch_reload.py [--swaps 20]

The policy allows exactly one model; each swap allows the other one, so the first answer that
flips marks the new revision in force. Requests are sent back to back (each one a real check),
so the figure includes the watcher's debounce, reading and compiling the revision, and at most
one request's round trip.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llm_authz.demo import processes  # noqa: E402
from llm_authz.demo.upstream import make_server  # noqa: E402
from tests.kubelet_volume import KubeletVolume, files_of  # noqa: E402

KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"
POLICY = 'package llm.authz\n\nimport rego.v1\n\ndecision := input.model.name == "{model}"\n'
MODELS = ("gpt-4o", "gpt-4o-mini")


def status(client: httpx.Client, url: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return client.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}).status_code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llm-authz-watch-bench-"))
    policies = KubeletVolume(work / "policies", {"llm/authz.rego": POLICY.format(model=MODELS[0])})
    KubeletVolume(work / "tenants", files_of(REPO / "tenants"))
    ingress, authz_port, upstream_port, admin, metrics = (processes.free_port() for _ in range(5))
    upstream = make_server("127.0.0.1", upstream_port)
    import threading

    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    authz = processes.start_llm_authz(
        ["--listen", f"127.0.0.1:{authz_port}", "--metrics-listen", f"127.0.0.1:{metrics}", "--policies",
         str(policies.root), "--tenants", str(work / "tenants"), "--audit-dir", str(work / "audit"),
         "--audit-durability", "buffered"], work)
    envoy = None
    try:
        processes.wait_for_port(authz_port, proc=authz)
        envoy = processes.start_envoy(processes.render_envoy_config(ingress, authz_port, upstream_port, admin), work)
        processes.wait_envoy_ready(admin)
        url = f"http://127.0.0.1:{ingress}/v1/chat/completions"
        delays = []
        with httpx.Client(timeout=10) as client:
            for i in range(1, args.swaps + 1):
                model = MODELS[i % 2]
                time.sleep(0.5)  # let the previous burst of events settle
                swapped = time.perf_counter()
                policies.update({"llm/authz.rego": POLICY.format(model=model)})
                while status(client, url, model) != 200:
                    if time.perf_counter() - swapped > 30:
                        raise TimeoutError("the swapped policy was not applied within 30 s")
                delays.append(time.perf_counter() - swapped)
        ms = sorted(d * 1000 for d in delays)
        print(f"{len(ms)} kubelet-style swaps, swap → first request decided by the new revision (ms):")
        print(f"  min {ms[0]:.0f}  median {statistics.median(ms):.0f}  p90 {ms[int(0.9 * (len(ms) - 1))]:.0f}  "
              f"max {ms[-1]:.0f}")
    finally:
        processes.stop(envoy)
        processes.stop(authz)
        upstream.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
