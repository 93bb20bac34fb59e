"""Making small real audit logs for the audit unit tests, and rewriting them the way a forger would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz.audit import chain
from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.policy import PolicySource

SOURCE = PolicySource({"llm/authz.rego": "package llm.authz\n\ndecision := {\"allow\": true}\n"},
                      {"tenants": {}}, "data.llm.authz.decision")
REVISION = SOURCE.revision


def decision(i: int, allowed: bool = True) -> dict[str, Any]:
    return {"time": "2026-01-01T00:00:00.000000Z", "decision_id": f"d-{i}", "request_id": f"r-{i}",
            "policy": {"revision": REVISION, "entrypoint": "data.llm.authz.decision"}, "engine": "embedded",
            "input": {"request": {"path": "/v1/chat/completions"}}, "masked": [], "result": {"allow": allowed},
            "allowed": allowed, "status": 200 if allowed else 403, "reasons": [], "tenant": "acme",
            "subject": "ak_acme_1", "model": "gpt-4o", "latency_us": 100 + i, "dry_run": False}


def make_log(directory: Path, n: int = 60, key: Ed25519PrivateKey | None = None, close: bool = True,
             **options: Any) -> AuditLog:
    """A log of n decisions; by default with checkpoints every 10 and ~3 KiB segments."""
    options = {"checkpoint_records": 10, "segment_bytes": 4096, "commit_window_ms": 0, "signing_key": key,
               **options}
    log = AuditLog(directory, AuditOptions(**options))
    log.archive_revision(SOURCE)
    for i in range(n):
        log.append(decision(i))
    if close:
        log.close()
    return log


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if chain.is_segment_name(p.name))


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines(path)]


def rewrite(path: Path, recs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(chain.encode(r)[0] for r in recs))


def rechain(directory: Path, start_file: int = 0, start_line: int = 0, key: Ed25519PrivateKey | None = None) -> None:
    """Recompute every hash and prev_hash from (file, line) on, as a forger would; re-sign only with `key`."""
    files = segments(directory)
    prev = None
    for fi, path in enumerate(files):
        recs = records(path)
        for li, rec in enumerate(recs):
            if (fi, li) >= (start_file, start_line):
                if prev is not None:
                    rec["prev_hash"] = prev
                if key is not None and rec.get("kind") == chain.CHECKPOINT:
                    rec["signature"] = chain.b64(key.sign(chain.signed_message(rec)))
            rec.pop("hash", None)
            prev = chain.encode(rec)[1]
            rec["hash"] = prev
        rewrite(path, recs)


def crash_writer(directory: Path, n: int, **options: Any) -> None:
    """A separate process appends n decisions and is killed with SIGKILL: no shutdown checkpoint."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent.parent)!r})
        from tests.unit.audit_logs import make_log
        make_log(__import__("pathlib").Path({str(directory)!r}), {n}, close=False, **{options!r})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
