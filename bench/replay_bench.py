"""Replay speed on a large log: records/s of verify mode and impact mode.

Makes an audit log of N decisions in-process (the real Checker and audit writer, buffered
durability, a mix of tenants, models, keys and outcomes), then times `llm-authz replay` on it.

    .venv/bin/python bench/replay_bench.py [--records 100000] [--jobs 2] [--log DIR] [--compress zstd|gzip]

With --compress, the log's closed segments are then compressed as the service does it and the
same runs are timed again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llm_authz.audit.writer import AuditLog, AuditOptions  # noqa: E402
from llm_authz.check import Checker  # noqa: E402
from llm_authz.config import Config  # noqa: E402
from llm_authz.runtime import load_snapshot  # noqa: E402
from tests.helpers import check_request  # noqa: E402

KEYS = {"acme": "sk-llm-acme-demo-6f1c0e2a9b7d4e58", "readonly": "sk-llm-acme-readonly-2c7e91d04b3a5f66",
        "free": "sk-llm-hobbyist-demo-93a1d7c2e05b4f18", "research": "sk-llm-research-demo-0d4b8e6f1a2c7395"}
MIX = [("acme", "gpt-4o"), ("acme", "gpt-4o-mini"), ("acme", "gpt-5"), ("free", "llama-3-8b"), ("free", "gpt-4o"),
       ("research", "llama-3-70b"), ("readonly", "gpt-4o"), (None, "gpt-4o"), ("acme", "text-embed-3")]


def make_log(directory: Path, records: int, distinct: bool = False, segment_bytes: int = 64 << 20) -> None:
    config = Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants", audit_dir=directory)
    snapshot = load_snapshot(config)
    audit = AuditLog(directory, AuditOptions(durability="buffered", segment_bytes=segment_bytes))
    audit.archive_revision(snapshot.revision.source)
    checker = Checker(snapshot, audit)  # no quota counter: every request is decided on its own merits
    requests = []
    for i, (key, model) in enumerate(MIX):
        headers = {"authorization": f"Bearer {KEYS[key]}"} if key else {}
        body = {"model": model, "max_tokens": 64 * (i + 1), "messages": [{"role": "user", "content": "hello " * (i + 1)}]}
        requests.append(check_request(headers=headers, body=body, source=f"10.0.{i}.7"))
    started = time.monotonic()
    for n in range(records):
        if distinct:  # a body of another size every time: no two inputs the policy reads are alike
            key, model = MIX[n % len(MIX)]
            headers = {"authorization": f"Bearer {KEYS[key]}"} if key else {}
            body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "x" * (n % 4000)}]}
            checker.check(check_request(headers=headers, body=body, source=f"10.0.{n % 250}.7"))
            continue
        checker.check(requests[n % len(requests)])
    audit.close()
    print(f"made {records} records in {time.monotonic() - started:.1f} s", file=sys.stderr)


def timed_replay(log: Path, *extra: str) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "llm_authz", "replay", str(log), "--format", "json", *extra],
                          cwd=REPO, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(proc.stderr)
    return elapsed, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--log", type=Path, help="reuse (or keep) the log in this directory")
    parser.add_argument("--distinct", action="store_true",
                        help="make every record's input differ (no memo hits: the evaluation-bound speed)")
    parser.add_argument("--compress", choices=["zstd", "gzip"], help="then compress closed segments and time again")
    args = parser.parse_args()
    log = args.log or Path(tempfile.mkdtemp(prefix="replay-bench-")) / "audit"
    if not log.exists():
        # With --compress, 8 MiB segments: most of the log is in closed (compressible) segments.
        make_log(log, args.records, args.distinct, (8 << 20) if args.compress else (64 << 20))
    candidate = Path(tempfile.mkdtemp(prefix="replay-candidate-")) / "tenants"
    shutil.copytree(REPO / "tenants", candidate)
    acme = candidate / "acme.yaml"
    acme.write_text("\n".join(line for line in acme.read_text().splitlines() if not line.startswith("  gpt-4o: ")))
    time_runs(log, candidate, args)
    if args.compress:
        from llm_authz.audit import compress, segments

        for seg in segments.list_segments(log)[:-1]:
            if not seg.compressed:
                compress.compress_segment(seg.path, args.compress)
        print(f"closed segments compressed ({args.compress}):")
        time_runs(log, candidate, args)


def time_runs(log: Path, candidate: Path, args: argparse.Namespace) -> None:
    from llm_authz.audit import segments

    found = segments.list_segments(log)
    print(f"log: {sum(s.path.stat().st_size for s in found) / 1e6:.1f} MB in {len(found)} segments "
          f"({sum(s.compressed for s in found)} compressed)")
    jobs = ["--jobs", str(args.jobs)]
    for label, extra in (("verify mode (incl. chain verification)", jobs),
                         ("verify mode, --no-verify (evaluation only)", [*jobs, "--no-verify"]),
                         ("impact mode (incl. chain verification)", [*jobs, "--tenants", str(candidate)])):
        elapsed, report = timed_replay(log, *extra)
        totals = ", ".join(f"{k} {v}" for k, v in report["totals"].items())
        print(f"{label:46} {report['records']:>8} records  {elapsed:6.1f} s  "
              f"{report['records'] / elapsed:>9,.0f} records/s  ({totals})")


if __name__ == "__main__":
    main()
