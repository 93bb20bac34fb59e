"""What each change gained: the in-process cost per decision at several git revisions, alternated.

Each revision's service/, policies/ and tenants/ are exported (git archive) to a temp directory
and bench/inprocess.py runs against them in a process of its own (PYTHONPATH), round after
round in turn, so a busy machine slows them all alike. GOGC can be given per revision (the
service sets 400 from the revision that introduced it).

    python bench/compare.py main@100 d0760e8@100 ec3b07f@400 HEAD@400 [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import fixtures  # noqa: E402


def export(rev: str, dest: Path) -> str:
    dest.mkdir(parents=True)
    archive = dest / "tree.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), rev, "service", "policies", "tenants"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s", rev],
                          capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="in-process µs per decision at several revisions")
    ap.add_argument("revisions", nargs="+", help="REV or REV@GOGC")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llm-authz-compare-"))
    runs = []
    for i, spec in enumerate(args.revisions):
        rev, _, gogc = spec.partition("@")
        tree = work / f"r{i}"
        title = export(rev, tree)
        fx = fixtures.make(tree / "fixtures", source=tree)
        runs.append({"spec": spec, "title": title, "tree": tree, "fx": fx, "gogc": gogc or "100",
                     "cpu": [], "wall": [], "cpu_no_audit": [], "jwt": []})
    for rnd in range(args.rounds):
        for run in runs:
            env = {**os.environ, "PYTHONPATH": str(run["tree"] / "service"), "GOGC": run["gogc"]}
            out = subprocess.run([sys.executable, str(BENCH / "inprocess.py"), "decision", "--root", str(run["fx"].root),
                                  "--api-key", run["fx"].api_key, "--jwt", run["fx"].jwt_token],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"{run['spec']}: {out.stderr[-800:]}")
            result = json.loads(out.stdout)
            run["cpu"].append(result["api_key"].get("cpu_median_us", result["api_key"]["median_us"]))
            run["wall"].append(result["api_key"]["median_us"])
            run["cpu_no_audit"].append(result["api_key_no_audit"].get("cpu_median_us"))
            run["jwt"].append(result["jwt"].get("cpu_median_us"))
            sys.stderr.write(f"round {rnd + 1} {run['spec']}: {run['cpu'][-1]} µs CPU\n")
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} alternating rounds, API key, audit record built")
    print("| revision | GOGC | API key: CPU µs per check | wall µs | CPU µs without the audit record | JWT: CPU µs |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        jwt = [v for v in run["jwt"] if v is not None]
        print(f"| {run['title'][:70]} | {run['gogc']} | {statistics.median(run['cpu']):.0f} | "
              f"{statistics.median(run['wall']):.0f} | {statistics.median(run['cpu_no_audit']):.0f} | "
              f"{f'{statistics.median(jwt):.0f}' if jwt else '–'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
