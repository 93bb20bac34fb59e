"""How fast `llm-authz audit verify` checks a log: records per second on a log of N records.

    .venv/bin/python bench/audit_verify_bench.py [--records 200000] [--keep DIR] [--compress zstd|gzip]

The records are real: a few checks (allowed and denied) run through the real pipeline (the
default policy, the example tenants, the embedded OPA engine) to capture what the service logs;
the log is then filled with copies of them under fresh decision ids, written by the real
AuditLog (group commit, signed checkpoints every 1000 records, 64 MiB segments). The time
reported is `llm-authz audit verify --public-key` as a user runs it (a subprocess). With
--compress, the closed segments are then compressed as the service does it and verify is timed
again on the same records.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.check import Checker
from llm_authz.config import Config
from llm_authz.runtime import load_snapshot
from workload import chat_body, check_request

REPO = Path(__file__).resolve().parents[1]
KEYS = ["sk-llm-acme-demo-6f1c0e2a9b7d4e58", "sk-llm-hobbyist-demo-93a1d7c2e05b4f18", "sk-llm-nope"]
MODELS = ["gpt-4o", "llama-3-8b", "gpt-5"]


class Capture:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def append(self, record: dict) -> None:
        self.records.append(record)


def templates() -> tuple[list[dict], object]:
    config = Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants")
    capture = Capture()
    snapshot = load_snapshot(config)
    checker = Checker(snapshot, capture)
    for key in KEYS:
        for model in MODELS:
            checker.check(check_request(key, chat_body().replace(b'"gpt-4o"', f'"{model}"'.encode())))
    return capture.records, snapshot.revision.source


def write_log(directory: Path, n: int, key: Ed25519PrivateKey) -> None:
    base, source = templates()
    log = AuditLog(directory, AuditOptions(durability="buffered", commit_window_ms=5, signing_key=key))
    log.archive_revision(source)
    threads_n = 64
    per_thread = n // threads_n

    def worker(t: int) -> None:
        for i in range(per_thread):
            rec = dict(base[(t + i) % len(base)])
            rec["decision_id"] = str(uuid.uuid4())
            log.append(rec)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()


def time_verify(directory: Path, pub: Path, args: argparse.Namespace) -> int:
    from llm_authz.audit import segments

    found = segments.list_segments(directory)
    size = sum(s.path.stat().st_size for s in found)
    print(f"log: {size / 1e6:.1f} MB in {len(found)} segments ({sum(s.compressed for s in found)} compressed)")
    cli = [str(Path(sys.executable).parent / "llm-authz"), "audit", "verify", "--public-key", str(pub), str(directory)]
    for jobs in args.jobs:
        best = None
        for _ in range(args.runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run([*cli, "--jobs", str(jobs)], capture_output=True, text=True)
            elapsed = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            if out.returncode != 0:
                print(out.stdout, out.stderr)
                return 1
            best = elapsed if best is None else min(best, elapsed)
            total = int(out.stdout.split("ok: ", 1)[1].split(" ", 1)[0])
            print(f"--jobs {jobs}: {total} records in {elapsed:.2f}s = {total / elapsed:,.0f} records/s "
                  f"(CPU {cpu:.2f}s: {total / cpu:,.0f} records per CPU-second)")
        print(f"--jobs {jobs} best: {total / best:,.0f} records/s (the whole command, interpreter start included)")
    print(out.stdout.strip())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keep", type=Path, help="write the log here and keep it")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs values to time")
    parser.add_argument("--compress", choices=["zstd", "gzip"], help="then compress closed segments and time again")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="audit-bench-"))
    pub = work / "audit.pub.pem"
    directory = work / "audit"
    t0 = time.perf_counter()
    if not (directory.is_dir() and pub.exists()):  # --keep DIR of an earlier run: reuse its log
        key = Ed25519PrivateKey.generate()
        write_log(directory, args.records, key)
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
        print(f"wrote {args.records} decision records in {time.perf_counter() - t0:.1f}s")
    if time_verify(directory, pub, args) != 0:
        return 1
    if args.compress:
        from llm_authz.audit import compress, segments

        t0 = time.perf_counter()
        for seg in segments.list_segments(directory)[:-1]:
            compress.compress_segment(seg.path, args.compress)
        print(f"compressed the closed segments ({args.compress}) in {time.perf_counter() - t0:.1f}s")
        if time_verify(directory, pub, args) != 0:
            return 1
    if not args.keep:
        import shutil
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
