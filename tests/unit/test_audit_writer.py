"""The audit writer: group commit, segments, checkpoints, recovery, revisions, write failures."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz.audit import chain, reader
from llm_authz.audit.verify import verify
from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.errors import AuditWriteError
from llm_authz.policy import PolicySource
from tests.unit.audit_logs import crash_writer, decision, lines, make_log, records, segments

KEY = Ed25519PrivateKey.generate()


def all_records(directory: Path) -> list[dict]:
    return list(reader.iter_records([directory], kinds=None))


def test_records_are_chained_and_hashed_over_their_canonical_body(tmp_path):
    make_log(tmp_path, 5, key=KEY)
    recs = all_records(tmp_path)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert recs[0]["kind"] == "segment" and recs[0]["prev_hash"] == chain.GENESIS
    for before, rec in zip(recs, recs[1:]):
        assert rec["prev_hash"] == before["hash"]
    for rec in recs:
        body = {k: v for k, v in rec.items() if k != "hash"}
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        assert rec["hash"] == hashlib.sha256(canonical).hexdigest()
    line = lines(segments(tmp_path)[0])[1]
    assert line[:-chain.HASH_SUFFIX_LEN] + b"}" == orjson.dumps(
        {k: v for k, v in orjson.loads(line).items() if k != "hash"}, option=orjson.OPT_SORT_KEYS)
    assert verify([tmp_path], [KEY.public_key()], check_revisions=False).ok


def test_group_commit_writes_one_batch_for_many_concurrent_checks(tmp_path, monkeypatch):
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])  # a spy: the real call
    log = AuditLog(tmp_path, AuditOptions(commit_window_ms=5, checkpoint_records=10_000))
    barrier = threading.Barrier(32)

    def check(i: int) -> None:
        barrier.wait()
        for j in range(10):
            log.append(decision(i * 100 + j))

    threads = [threading.Thread(target=check, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    commits = log.commits
    log.close()
    assert commits < 320 / 4, "records were not batched"
    assert len(syncs) <= commits + 2  # one fdatasync per batch (+ segment header, final checkpoint)
    ids = [r["decision_id"] for r in reader.iter_records([tmp_path])]
    assert sorted(ids) == sorted({f"d-{i * 100 + j}" for i in range(32) for j in range(10)})
    assert verify([tmp_path], check_revisions=False).ok


def test_buffered_durability_writes_without_fsync_per_batch(tmp_path, monkeypatch):
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
    log = AuditLog(tmp_path, AuditOptions(durability="buffered", commit_window_ms=0, checkpoint_records=10_000))
    for i in range(20):
        log.append(decision(i))
    assert sum(1 for _ in reader.iter_records([tmp_path])) == 20  # written (not fsynced) before answered
    assert len(syncs) == 1  # only the new segment's header
    log.close()
    assert len(syncs) == 2  # the shutdown checkpoint is fsynced
    assert sum(1 for _ in reader.iter_records([tmp_path])) == 20


def test_segments_rotate_by_size_each_closed_with_a_signed_checkpoint(tmp_path):
    make_log(tmp_path, 60, key=KEY, segment_bytes=4096)
    files = segments(tmp_path)
    assert len(files) >= 3
    for before, after in zip(files, files[1:]):
        last, first = records(before)[-1], records(after)[0]
        assert last["kind"] == "checkpoint" and last["reason"] == "rotation" and last["signature"]
        assert first["kind"] == "segment" and first["previous"] == before.name
        assert first["prev_hash"] == last["hash"] and first["seq"] == last["seq"] + 1
        assert after.name == chain.segment_name(first["seq"])
    assert verify([tmp_path], [KEY.public_key()], check_revisions=False).ok


def test_segments_rotate_by_age(tmp_path):
    log = AuditLog(tmp_path, AuditOptions(segment_seconds=1, commit_window_ms=0))
    log.append(decision(1))
    time.sleep(1.1)
    log.append(decision(2))
    log.close()
    assert len(segments(tmp_path)) == 2


def test_checkpoints_every_n_records_every_t_seconds_and_at_shutdown(tmp_path):
    log = AuditLog(tmp_path, AuditOptions(checkpoint_records=5, checkpoint_seconds=0.2, commit_window_ms=0,
                                          signing_key=KEY))
    for i in range(5):
        log.append(decision(i))
    log.append(decision(5))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(r.get("reason") == "interval" for r in all_records(tmp_path)):
        time.sleep(0.05)
    log.close()
    reasons = [r["reason"] for r in all_records(tmp_path) if r["kind"] == "checkpoint"]
    assert reasons == ["records", "interval", "shutdown"]
    last = all_records(tmp_path)[-1]
    assert last["key_id"] and last["public_key"] and last["signature"] and last["records"] == 0


def test_restart_after_clean_shutdown_continues_the_chain_without_recovery(tmp_path):
    make_log(tmp_path, 3, key=KEY)
    make_log(tmp_path, 3, key=KEY)
    kinds = [r["kind"] for r in all_records(tmp_path)]
    assert "recovery" not in kinds
    assert verify([tmp_path], [KEY.public_key()], check_revisions=False).ok


def test_kill_9_then_restart_logs_a_recovery_and_signs_what_was_unsigned(tmp_path):
    crash_writer(tmp_path, 7, checkpoint_records=100)
    before = all_records(tmp_path)
    assert before[-1]["kind"] == "decision"  # no shutdown checkpoint: killed
    log = AuditLog(tmp_path, AuditOptions(signing_key=KEY))
    log.close()
    recs = all_records(tmp_path)
    recovery = recs[len(before)]
    assert recovery["kind"] == "recovery" and recovery["reason"] == "unclean_shutdown"
    assert recovery["after_seq"] == before[-1]["seq"] and recovery["torn"] == []
    assert recs[len(before) + 1]["kind"] == "checkpoint" and recs[len(before) + 1]["reason"] == "recovery"
    assert verify([tmp_path], check_revisions=False).ok


def test_a_torn_last_line_is_moved_aside_and_the_chain_continues(tmp_path):
    crash_writer(tmp_path, 7, checkpoint_records=100, segment_bytes=1 << 20)
    segment = segments(tmp_path)[-1]
    whole = segment.stat().st_size
    torn = b'{"allowed":true,"decision_id":"d-7","kind":"deci'
    with segment.open("ab") as fh:
        fh.write(torn)
    assert not verify([tmp_path], check_revisions=False).ok
    log = AuditLog(tmp_path, AuditOptions(signing_key=KEY))
    log.close()
    assert log.torn and log.torn[0].offset == whole
    evidence = tmp_path / log.torn[0].file
    assert evidence.read_bytes() == torn
    recovery = next(r for r in all_records(tmp_path) if r["kind"] == "recovery")
    assert recovery["reason"] == "torn_tail"
    assert recovery["torn"] == [{"file": log.torn[0].file, "segment": segment.name, "offset": whole,
                                 "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}]
    report = verify([tmp_path], [KEY.public_key()], check_revisions=False)
    assert report.ok, report.problem
    assert report.recoveries == 1


def test_a_segment_with_nothing_whole_is_kept_aside_and_the_previous_one_goes_on(tmp_path):
    make_log(tmp_path, 20, segment_bytes=4096)
    files = segments(tmp_path)
    last = records(files[-1])[-1]
    stray = tmp_path / chain.segment_name(last["seq"] + 1)
    stray.write_bytes(b'{"format":"llm-authz/audit/v1","kind":"seg')
    log = AuditLog(tmp_path)
    log.append(decision(99))
    log.close()
    assert not stray.exists() or records(stray)[0]["kind"] == "segment"
    assert [p.name for p in (tmp_path / "torn").iterdir()] == [f"{stray.name}.at-0.torn"]
    assert verify([tmp_path], check_revisions=False).ok


def test_a_second_writer_on_the_same_directory_is_refused(tmp_path):
    log = AuditLog(tmp_path)
    with pytest.raises(AuditWriteError, match="in use"):
        AuditLog(tmp_path)
    log.close()
    AuditLog(tmp_path).close()


def test_revisions_are_archived_by_content_hash_and_logged(tmp_path):
    source = PolicySource({"a.rego": "package a\nallow := true\n"}, {"tenants": {}}, "data.a.allow")
    log = AuditLog(tmp_path)
    log.archive_revision(source)
    log.archive_revision(source)
    log.close()
    doc = reader.load_revision(tmp_path, source.revision)
    assert PolicySource.from_document(doc).revision == source.revision
    assert list((tmp_path / "revisions").iterdir()) == [tmp_path / "revisions" / f"{source.revision}.json"]
    logged = [r for r in all_records(tmp_path) if r["kind"] == "revision"]
    assert [r["revision"] for r in logged] == [source.revision] * 2
    assert verify([tmp_path]).ok


def test_a_record_that_cannot_be_encoded_fails_only_its_own_check(tmp_path):
    log = AuditLog(tmp_path, AuditOptions(commit_window_ms=20))
    bad = decision(1)
    bad["result"] = {"tokens": 2**70}
    errors = []

    def append(rec: dict) -> None:
        try:
            log.append(rec)
        except AuditWriteError as exc:
            errors.append((rec["decision_id"], str(exc)))

    threads = [threading.Thread(target=append, args=(r,)) for r in (decision(0), bad, decision(2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert [e[0] for e in errors] == ["d-1"]
    assert [r["decision_id"] for r in reader.iter_records([tmp_path])] in (["d-0", "d-2"], ["d-2", "d-0"])
    assert verify([tmp_path], check_revisions=False).ok


def test_a_write_that_fails_denies_and_the_log_heals_when_space_returns(tmp_path):
    """A real EFBIG from RLIMIT_FSIZE (Python ignores SIGXFSZ), in a child process."""
    script = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from llm_authz.audit.writer import AuditLog, AuditOptions
        from llm_authz.errors import AuditWriteError
        from tests.unit.audit_logs import decision, segments
        d = Path({str(tmp_path)!r})
        log = AuditLog(d, AuditOptions(commit_window_ms=0, checkpoint_records=1000))
        log.append(decision(0))
        size = segments(d)[-1].stat().st_size
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
        try:
            log.append(decision(1))
            print("no error")
        except AuditWriteError as exc:
            print("denied:", exc)
        print("size kept:", segments(d)[-1].stat().st_size == size)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        log.append(decision(2))
        log.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "denied: audit write failed: File too large" in out.stdout
    assert "size kept: True" in out.stdout
    assert [r["decision_id"] for r in reader.iter_records([tmp_path])] == ["d-0", "d-2"]
    assert verify([tmp_path], check_revisions=False).ok


def test_append_after_close_raises(tmp_path):
    log = AuditLog(tmp_path)
    log.close()
    with pytest.raises(AuditWriteError, match="closed"):
        log.append(decision(0))


def test_the_chain_uses_the_projects_canonical_json():
    from llm_authz import policy

    value = {"b": [1, 2.5, "é"], "a": {"z": None, "y": True}}
    assert chain.canonical_json(value) == policy.canonical_json(value)


def test_two_writers_archiving_the_same_revision_at_once_both_succeed(tmp_path, monkeypatch):
    """Worker processes share revisions/: one's rename must not take the other's half-written file."""
    import llm_authz.audit.writer as writer_module

    main = AuditLog(tmp_path, AuditOptions(commit_window_ms=0))
    worker = AuditLog(tmp_path, AuditOptions(commit_window_ms=0), chain_name="w1")
    source = PolicySource({"p.rego": "package p\n\nx := 1\n"}, {}, "data.p.x")
    real_replace = os.replace
    interleaved = []

    def replace_after_the_other_writer(src, dst):
        if not interleaved:  # main is about to rename its file: the worker archives the same revision first
            interleaved.append(src)
            worker.archive_revision(source)
        return real_replace(src, dst)

    monkeypatch.setattr(writer_module.os, "replace", replace_after_the_other_writer)
    main.archive_revision(source)
    monkeypatch.setattr(writer_module.os, "replace", real_replace)
    main.close()
    worker.close()
    archived = tmp_path / chain.REVISIONS_DIR / f"{source.revision}.json"
    assert hashlib.sha256(archived.read_bytes()).hexdigest() == source.revision
    assert not list((tmp_path / chain.REVISIONS_DIR).glob("*.tmp"))
