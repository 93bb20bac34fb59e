"""Checks per second and p99 latency through Envoy, audit durability `fsync` versus `buffered`.

    .venv/bin/python bench/audit_load_bench.py [--seconds 15] [--connections 32] [--mix allow|deny]

For each durability it starts the demo model server (its own process), llm-authz (embedded engine,
the example tenants, a signed audit log with the default 1 ms commit window) and Envoy, then runs
wrk against Envoy: POST /v1/chat/completions with acme's API key (`allow`: 200 through to the
model server; `deny`: a model acme has no grant for, 403 from llm-authz). Every request is one
Check and one audit record. Needs `wrk` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llm_authz.audit.keys import generate  # noqa: E402
from llm_authz.demo import processes  # noqa: E402

ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"
LUA = """
wrk.method = "POST"
wrk.body = '{"model":"%s","messages":[{"role":"user","content":"Summarise the quarterly report."}],"max_tokens":64}'
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer %s"
"""


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> tuple[float, float, str]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                          url + "/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99_match = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not rps_match or not p99_match:
        raise RuntimeError("unexpected wrk output:\n" + out)
    rps = float(rps_match.group(1))
    value, unit = p99_match.groups()
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99_ms, out


def one(durability: str, work: Path, args: argparse.Namespace) -> dict:
    work.mkdir(parents=True)
    generate(work / "key.pem", work / "key.pub.pem")
    (work / "llm-authz.yaml").write_text(f"audit_commit_window_ms: {args.window}\n")
    ingress, authz, upstream, admin, metrics = (processes.free_port() for _ in range(5))
    # (the config file sets only the commit window; the flags below set the rest)
    model = subprocess.Popen([sys.executable, "-m", "llm_authz.demo.upstream", "--listen", f"127.0.0.1:{upstream}"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = processes.start_llm_authz(
        ["--listen", f"127.0.0.1:{authz}", "--metrics-listen", f"127.0.0.1:{metrics}", "--audit-dir",
         str(work / "audit"), "--config", str(work / "llm-authz.yaml"), "--audit-durability", durability, "--audit-signing-key", str(work / "key.pem"),
         "--log-level", "warning"], work)
    envoy = None
    try:
        processes.wait_for_port(upstream)
        processes.wait_for_port(authz, proc=server)
        envoy = processes.start_envoy(processes.render_envoy_config(ingress, authz, upstream, admin), work)
        processes.wait_envoy_ready(admin)
        script = work / "chat.lua"
        script.write_text(LUA % ("gpt-4o" if args.mix == "allow" else "gpt-5", ACME_KEY))
        url = f"http://127.0.0.1:{ingress}"
        run_wrk(url, script, 3, args.connections)  # warm up
        rps, p99, _ = run_wrk(url, script, args.seconds, args.connections)
        commit = audit_commit_stats(metrics)
    finally:
        processes.stop(envoy)
        processes.stop(server)
        processes.stop(model)
    verify = subprocess.run([str(Path(sys.executable).parent / "llm-authz"), "audit", "verify", "--public-key",
                             str(work / "key.pub.pem"), str(work / "audit")], capture_output=True, text=True)
    return {"durability": durability, "checks_per_s": rps, "p99_ms": p99, "verify": verify.stdout.strip(),
            "commit": commit}


def audit_commit_stats(metrics_port: int) -> str:
    """Mean time of one group commit (write + fsync) and mean records per batch, from /metrics."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    values = {}
    for name in ("llm_authz_audit_commit_seconds_sum", "llm_authz_audit_commit_seconds_count",
                 "llm_authz_audit_batch_records_sum", "llm_authz_audit_batch_records_count"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    commits = values["llm_authz_audit_commit_seconds_count"] or 1
    return (f"{int(commits)} commits, mean {values['llm_authz_audit_commit_seconds_sum'] / commits * 1000:.2f} ms "
            f"each, mean {values['llm_authz_audit_batch_records_sum'] / commits:.1f} records per batch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--mix", choices=["allow", "deny"], default="allow")
    parser.add_argument("--window", type=float, default=1.0, help="audit_commit_window_ms (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="run fsync and buffered this many times, alternating")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="audit-load-"))
    results = []
    for n in range(args.rounds):
        for durability in ("fsync", "buffered"):
            results.append(one(durability, root / f"{durability}-{n}", args))
            r = results[-1]
            print(f"  {r['durability']:8}  {r['checks_per_s']:8.0f} checks/s   p99 {r['p99_ms']:7.2f} ms", flush=True)
            print(f"            {r['commit']}", flush=True)
            print(f"            {r['verify']}", flush=True)
            time.sleep(1)
    print(f"{args.mix}, {args.connections} connections, {args.seconds}s, Envoy --concurrency 1, "
          f"{args.window} ms commit window")
    for durability in ("fsync", "buffered"):
        mine = [r for r in results if r["durability"] == durability]
        rps = statistics.median(r["checks_per_s"] for r in mine)
        p99 = statistics.median(r["p99_ms"] for r in mine)
        print(f"  {durability:8}  median of {len(mine)}: {rps:8.0f} checks/s   p99 {p99:7.2f} ms")
    shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
