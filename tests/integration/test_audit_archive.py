"""`audit archive` to a directory and to S3; `audit verify`, `audit export` and `replay` read the archive.

S3 is played by moto's server mode (`moto_server`, a local S3-compatible HTTP server started here):
a stand-in, since the real service cannot be reached from the test machine. boto3 talks to it
over HTTP exactly as it would to S3 (AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz.audit import archive, retention, segments
from llm_authz.audit.verify import verify
from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.cli import main
from llm_authz.demo.processes import free_port, stop, wait_for_port
from tests.unit.audit_logs import SOURCE, decision

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def write(directory: Path, start: int, n: int, **options) -> None:
    log = AuditLog(directory, AuditOptions(signing_key=KEY, commit_window_ms=0, checkpoint_records=10,
                                           segment_bytes=4096, compress="zstd", **options))
    log.archive_revision(SOURCE)
    for i in range(start, start + n):
        log.append(decision(i))
    assert log.maintenance.wait_idle()
    log.close()


def closed_decisions(directory: Path) -> int:
    """Decisions in the closed segments (what an archive holds)."""
    from llm_authz.audit import reader

    closed = archive.closed_segments(directory)
    return len(list(reader.iter_records([s.path for s in closed])))


@pytest.fixture
def pub(tmp_path: Path) -> str:
    path = tmp_path / "audit.pub.pem"
    path.write_bytes(PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(path)


def test_archive_to_a_directory_verifies_and_replays_from_it(tmp_path, pub, capsys):
    source, dest = tmp_path / "audit", tmp_path / "archive"
    write(source, 0, 60)
    assert main(["audit", "archive", str(source), "--to", str(dest)]) == 0
    first = capsys.readouterr().out
    closed = archive.closed_segments(source)
    assert f"{len(closed) + 1} file(s) copied" in first  # the closed segments and the one revision
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted([s.path.name for s in closed] + ["SHA256SUMS", "revisions"])
    assert all(n.endswith(".zst") for n in names if n.startswith("decisions-"))
    # The sums are what sha256sum itself checks.
    check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=dest, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert main(["audit", "verify", "--public-key", pub, str(dest)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    assert main(["replay", "--jobs", "1", "--format", "json", "--public-key", pub, str(dest)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] and report["records"] == closed_decisions(source) == report["totals"]["match"]
    # A second run copies only what is new: the segments closed since, then the manifest of a pruning.
    write(source, 60, 40)
    for seg in segments.list_segments(source)[:3]:
        os.utime(seg.path, (time.time() - 90 * 86400,) * 2)
    write(source, 100, 1, retention_days=30)
    assert retention.read_pruned(source)
    assert main(["audit", "archive", str(source), "--to", str(dest)]) == 0
    second = capsys.readouterr().out
    assert "already there" in second and "pruned.jsonl" in (dest / "SHA256SUMS").read_text()
    # The archive still holds the pruned segments: it verifies from seq 1 and names none pruned.
    report = verify([dest], [PUB])
    assert report.ok, report.problem
    assert report.first_seq == 1 and report.pruned == []
    from llm_authz.audit import reader

    ids = [r["decision_id"] for r in reader.iter_records([dest])]
    assert ids == [f"d-{i}" for i in range(len(ids))] and len(ids) >= 80 and report.decisions == len(ids)
    # The source, pruned, verifies on its own, anchored on the manifest.
    assert verify([source], [PUB]).ok and verify([source], [PUB]).pruned


def test_a_tampered_or_cut_archive_is_caught(tmp_path):
    source, dest = tmp_path / "audit", tmp_path / "archive"
    write(source, 0, 60)
    assert archive.archive(source, str(dest)).copied
    newest = sorted(p for p in dest.iterdir() if p.name.startswith("decisions-"))[-1]
    saved = newest.read_bytes()
    # The newest archived segment removed: the chain alone cannot tell (it just ends earlier)...
    newest.unlink()
    report = verify([dest], [PUB])
    assert not report.ok and report.problem.file == str(dest / "SHA256SUMS")
    assert "missing" in report.problem.message
    # ...and one replaced by other bytes (even ones that decompress fine) is caught too.
    newest.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    assert not verify([dest], [PUB]).ok


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3-compatible server (moto in server mode), as a stand-in for S3."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=60, proc=proc)
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield boto3.client("s3")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        stop(proc)


def test_archive_to_s3_verifies_and_replays_from_the_bucket(s3, tmp_path, pub, capsys):
    s3.create_bucket(Bucket="audit-archive")
    source = tmp_path / "audit"
    write(source, 0, 60)
    url = "s3://audit-archive/llm-authz/replica-0"
    assert main(["audit", "archive", str(source), "--to", url]) == 0
    assert "file(s) copied" in capsys.readouterr().out
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="audit-archive")["Contents"]]
    closed = archive.closed_segments(source)
    assert sorted(keys) == sorted([f"llm-authz/replica-0/{s.path.name}" for s in closed]
                                  + [f"llm-authz/replica-0/revisions/{SOURCE.revision}.json",
                                     "llm-authz/replica-0/SHA256SUMS"])
    head = s3.head_object(Bucket="audit-archive", Key=f"llm-authz/replica-0/{closed[0].path.name}")
    assert head["Metadata"]["sha256"] == archive.sha256_file(closed[0].path)
    assert main(["audit", "verify", "--public-key", pub, url]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    assert main(["replay", "--jobs", "1", "--format", "json", "--public-key", pub, url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] and report["records"] == closed_decisions(source) == report["totals"]["match"]
    assert main(["audit", "export", "-o", str(tmp_path / "events.jsonl"), url]) == 0
    assert len((tmp_path / "events.jsonl").read_bytes().splitlines()) == closed_decisions(source)
    # Running again copies nothing new; an object changed in the bucket fails verification.
    assert main(["audit", "archive", str(source), "--to", url]) == 0
    assert "0 file(s) copied" in capsys.readouterr().out
    key = f"llm-authz/replica-0/{closed[1].path.name}"
    body = s3.get_object(Bucket="audit-archive", Key=key)["Body"].read()
    s3.put_object(Bucket="audit-archive", Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))
    assert main(["audit", "verify", "--public-key", pub, url]) == 1
    assert "FAIL: " in capsys.readouterr().out


def test_s3_errors_exit_2_with_the_reason(s3, tmp_path, capsys):
    source = tmp_path / "audit"
    write(source, 0, 30)
    assert main(["audit", "archive", str(source), "--to", "s3://no-such-bucket/x"]) == 2
    assert "NoSuchBucket" in capsys.readouterr().err
    assert main(["audit", "verify", "s3://no-such-bucket/x"]) == 2
    assert main(["audit", "archive", str(source), "--to", "s3:///x"]) == 2
    assert main(["audit", "archive", str(tmp_path / "nothing"), "--to", str(tmp_path / "a")]) == 2
    shutil.rmtree(source)
