"""Retention removes the oldest closed segments; what stays verifies on its own, anchored by
pruned.jsonl; tampering with the rest or with the manifest is caught; shippers' cursors hold back."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz import metrics
from llm_authz.audit import chain, retention, segments
from llm_authz.audit.verify import verify
from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.cli import main
from tests.unit.audit_logs import decision, lines, make_log

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()
DAY = 86400


def seg_paths(directory: Path, chain_name: str = "main") -> list[Path]:
    return [s.path for s in segments.list_segments(directory) if s.chain == chain_name]


def keep(directory: Path, **options) -> AuditLog:
    """Open the log with retention settings, let one maintenance pass run, close it."""
    log = AuditLog(directory, AuditOptions(signing_key=KEY, commit_window_ms=0, checkpoint_records=10,
                                           segment_bytes=4096, **options))
    assert log.maintenance.wait_idle()
    log.close()
    return log


def manifest(directory: Path) -> list[dict]:
    return [entry for _, entry in retention.read_pruned(directory)]


def write_manifest(directory: Path, entries: list[dict]) -> None:
    (directory / retention.PRUNED_FILE).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))


def age(paths: list[Path], days: float) -> None:
    when = time.time() - days * DAY
    for path in paths:
        os.utime(path, (when, when))


@pytest.fixture
def log(tmp_path: Path) -> Path:
    directory = tmp_path / "audit"
    make_log(directory, 60, key=KEY)
    assert len(seg_paths(directory)) >= 6
    return directory


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_size_retention_prunes_the_oldest_and_the_rest_verifies(log, codec, capsys):
    before = seg_paths(log)
    revisions = sorted((log / chain.REVISIONS_DIR).iterdir())
    counted = metrics.AUDIT_PRUNED_SEGMENTS.labels(reason="size")._value.get()
    limit = sum(p.stat().st_size for p in before[-3:]) + 10
    if codec != "none":
        keep(log, compress=codec)  # closed segments compressed first: the limit is on bytes on disk
        limit = sum(p.stat().st_size for p in seg_paths(log)[-3:]) + 10
    keep(log, compress=codec, retention_bytes=limit)
    after = seg_paths(log)
    assert len(after) == 3  # what fit in the limit when the pass ran (closing added a checkpoint since)
    entries = manifest(log)
    pruned = [e["segment"] for e in entries]
    # Exactly the oldest ones went, in order, each recorded before it was removed.
    assert pruned == [p.name for p in before[:len(pruned)]] and len(pruned) == len(before) - len(after)
    assert [segments.plain_name(p.name) for p in after] == [p.name for p in before[len(pruned):]]
    assert all(e["reason"] == "size" and e["chain"] == "main" for e in entries)
    assert entries[0]["first_seq"] == 1
    for a, b in zip(entries, entries[1:]):
        assert b["first_seq"] == a["last_seq"] + 1
    assert entries[-1]["checkpoint"]["kind"] == "checkpoint" and entries[-1]["checkpoint"]["signature"]
    assert sorted((log / chain.REVISIONS_DIR).iterdir()) == revisions  # revisions are never pruned
    assert metrics.AUDIT_PRUNED_SEGMENTS.labels(reason="size")._value.get() == counted + len(pruned)
    # What stays verifies alone, and the report names what was pruned.
    report = verify([log], [PUB])
    assert report.ok, report.problem
    assert [p["segment"] for p in report.pruned] == pruned
    assert report.first_seq == entries[-1]["last_seq"] + 1
    assert main(["audit", "verify", "--public-key", str(pub_file(log.parent)), str(log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ")
    assert (f"pruned: chain main: {len(pruned)} segment(s) removed by retention ({len(pruned)} by size), "
            f"seq 1..{entries[-1]['last_seq']}") in out
    assert "are intact and anchored on the signed checkpoint" in out


def pub_file(where: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = where / "audit.pub.pem"
    path.write_bytes(PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_age_retention_prunes_only_a_prefix_of_old_segments(log):
    before = seg_paths(log)
    age(before[:2], 40)
    age(before[3:4], 40)  # old too, but after a young one: pruning it would leave a gap
    keep(log, retention_days=30)
    assert [e["segment"] for e in manifest(log)] == [p.name for p in before[:2]]
    assert all(e["reason"] == "age" for e in manifest(log))
    assert seg_paths(log) == before[2:]
    report = verify([log], [PUB])
    assert report.ok and report.first_seq == manifest(log)[-1]["last_seq"] + 1
    # A later pass (the young one has aged) goes on from there.
    age(seg_paths(log)[:1], 40)
    keep(log, retention_days=30)
    assert [e["segment"] for e in manifest(log)] == [p.name for p in before[:4]]
    assert verify([log], [PUB]).ok


def test_the_open_segment_is_never_pruned(log):
    age(seg_paths(log), 400)
    keep(log, retention_days=1, retention_bytes=1)
    assert len(seg_paths(log)) == 1
    report = verify([log], [PUB])
    assert report.ok and report.last_seq == max(e["last_seq"] for e in manifest(log)) + report.records


@pytest.fixture
def pruned(log: Path) -> Path:
    age(seg_paths(log)[:3], 40)
    keep(log, retention_days=30)
    assert len(manifest(log)) == 3 and verify([log], [PUB]).ok
    return log


def fails(directory: Path, *words: str):
    report = verify([directory], [PUB])
    assert not report.ok, "tampering went unnoticed"
    for word in words:
        assert word in str(report.problem), report.problem
    return report.problem


def test_an_edited_kept_record_is_caught(pruned):
    first = seg_paths(pruned)[0]
    data = lines(first)
    i = next(i for i, line in enumerate(data) if b'"kind":"decision"' in line)
    data[i] = data[i].replace(b'"allowed":true', b'"allowed":false')
    first.write_bytes(b"".join(data))
    problem = fails(pruned, "edited")
    assert problem.file == str(first) and problem.line == i + 1


def test_a_removed_kept_segment_is_caught_even_with_a_forged_manifest_line(pruned):
    first = seg_paths(pruned)[0]
    entries = manifest(pruned)
    closing = orjson.loads(lines(first)[-1])
    # Someone deletes the oldest kept segment and writes the manifest line llm-authz would have.
    first.unlink()
    fails(pruned, "removed")
    forged = {"chain": "main", "segment": first.name, "first_seq": entries[-1]["last_seq"] + 1,
              "last_seq": closing["seq"], "last_hash": closing["hash"], "checkpoint": closing,
              "pruned_at": retention.utc_now(), "reason": "age"}
    write_manifest(pruned, [*entries, forged])
    problem = fails(pruned, "not signed")
    assert problem.file == str(pruned / retention.PRUNED_FILE) and problem.line == 4
    # Signed with a key of the forger's own: still not the pinned key.
    other = Ed25519PrivateKey.generate()
    forged |= {"key_id": "x", "public_key": chain.b64(other.public_key().public_bytes_raw())}
    forged["signature"] = chain.b64(other.sign(retention.signed_entry_message(forged)))
    write_manifest(pruned, [*entries, forged])
    fails(pruned, "not by the given key")


@pytest.mark.parametrize("edit,words", [
    (lambda es: es[1]["checkpoint"].update(records=999), ("edited",)),
    (lambda es: es[2].update(last_hash="0" * 64), ("edited",)),
    (lambda es: es[0].update(reason="size"), ("manifest was edited",)),
    (lambda es: es.pop(1), ("missing",)),
    (lambda es: es.pop(), ("removed without a trace",)),
    (lambda es: es.clear(), ("does not start at seq 1",)),
])
def test_tampering_with_the_manifest_is_caught(pruned, edit, words):
    entries = manifest(pruned)
    edit(entries)
    write_manifest(pruned, entries)
    fails(pruned, *words)


def test_a_replaced_anchor_checkpoint_is_caught(pruned):
    entries = manifest(pruned)
    cp = dict(entries[-1]["checkpoint"])
    cp["time"] = "2020-01-01T00:00:00.000000Z"
    cp.pop("hash")
    cp["signature"] = chain.b64(KEY.sign(chain.signed_message(cp)))  # even re-signed with the real key
    cp["hash"] = chain.record_hash(cp)
    entries[-1] |= {"checkpoint": cp, "last_hash": cp["hash"]}
    entries[-1].pop("signature")
    entries[-1]["signature"] = chain.b64(KEY.sign(retention.signed_entry_message(entries[-1])))
    write_manifest(pruned, entries)
    fails(pruned, "does not continue the pruned")


def test_a_shippers_cursor_holds_back_pruning(log):
    before = seg_paths(log)
    age(before, 40)
    cursors = log / retention.CURSORS_DIR
    cursors.mkdir()
    second_last = before[2].name  # the cursor has delivered up to the end of the second segment
    delivered = segments.parse_name(second_last)[1] - 1
    (cursors / "decision-log.json").write_bytes(orjson.dumps(
        {"name": "decision-log", "chains": {"main": {"seq": delivered, "segment": before[1].name}},
         "updated": retention.utc_now()}))
    keep(log, retention_days=30)
    assert [e["segment"] for e in manifest(log)] == [p.name for p in before[:2]]
    assert manifest(log)[-1]["last_seq"] <= delivered
    # A second shipper that names no chain holds back everything; so does a cursor that cannot be read.
    (cursors / "other.json").write_bytes(orjson.dumps({"name": "other", "chains": {}, "updated": ""}))
    keep(log, retention_days=30)
    assert len(manifest(log)) == 2
    (cursors / "other.json").write_bytes(b"{not json")
    (cursors / "decision-log.json").write_bytes(orjson.dumps(
        {"name": "decision-log", "chains": {"main": {"seq": 10**9, "segment": ""}}, "updated": ""}))
    keep(log, retention_days=30)
    assert len(manifest(log)) == 2
    # Removing the cursor of a shipper gone for good releases what it held.
    (cursors / "other.json").unlink()
    keep(log, retention_days=30)
    assert len(manifest(log)) == len(before) - 1
    assert verify([log], [PUB]).ok


def test_a_crash_between_the_manifest_line_and_the_removal_is_finished(log, tmp_path):
    before = seg_paths(log)
    age(before[:2], 40)
    saved = tmp_path / before[1].name
    shutil.copy2(before[1], saved)
    keep(log, retention_days=30)
    assert [e["segment"] for e in manifest(log)] == [before[0].name, before[1].name]
    # The second segment's file is back: as if the crash came right after its manifest line.
    shutil.copy2(saved, log / before[1].name)
    report = verify([log], [PUB])
    assert report.ok, report.problem
    assert [p["segment"] for p in report.pruned] == [before[0].name]  # anchored on the first entry
    keep(log, retention_days=30)
    assert len(manifest(log)) == 2  # the removal is finished, the line not written twice
    assert not (log / before[1].name).exists()
    assert verify([log], [PUB]).ok


def test_chains_prune_their_own_segments_and_each_verifies(tmp_path):
    directory = tmp_path / "audit"
    opts = AuditOptions(signing_key=KEY, commit_window_ms=0, checkpoint_records=10, segment_bytes=4096)
    logs = [AuditLog(directory, opts), AuditLog(directory, opts, chain_name="w1")]
    for i in range(50):
        for n, w in enumerate(logs):
            w.append(decision(100 * n + i))
    for w in logs:
        w.close()
    age(seg_paths(directory, "main")[:2] + seg_paths(directory, "w1")[:3], 40)
    for name in ("main", "w1"):
        w = AuditLog(directory, AuditOptions(signing_key=KEY, retention_days=30), chain_name=name)
        assert w.maintenance.wait_idle()
        w.close()
    assert [(e["chain"], e["first_seq"]) for e in manifest(directory)][:1] == [("main", 1)]
    assert sorted(e["chain"] for e in manifest(directory)) == ["main"] * 2 + ["w1"] * 3
    report = verify([directory], [PUB], check_revisions=False)
    assert report.ok, report.problem
    assert len(report.pruned) == 5


def test_a_shipper_that_has_delivered_nothing_yet_holds_back_everything(log):
    age(seg_paths(log), 40)
    assert retention.hold(log, "decision-log") is True
    keep(log, retention_days=30)
    assert manifest(log) == []
    # Its first delivery replaces the placeholder; hold never overwrites a real position.
    cursor = log / retention.CURSORS_DIR / "decision-log.json"
    delivered = segments.parse_name(seg_paths(log)[1].name)[1] - 1
    cursor.write_bytes(orjson.dumps({"name": "decision-log", "chains": {"main": {"seq": delivered, "segment": ""}},
                                     "updated": retention.utc_now()}))
    assert retention.hold(log, "decision-log") is False
    assert orjson.loads(cursor.read_bytes())["chains"]["main"]["seq"] == delivered
    keep(log, retention_days=30)
    assert len(manifest(log)) == 1 and verify([log], [PUB]).ok


def test_serve_with_a_decision_log_url_holds_back_pruning_before_its_first_delivery(tmp_path):
    from llm_authz.config import Config
    from llm_authz.runtime import Runtime

    repo = Path(__file__).resolve().parents[2]
    directory = tmp_path / "audit"
    make_log(directory, 60, key=KEY)
    age(seg_paths(directory), 40)
    config = Config(policies=repo / "policies" / "rego", tenants=repo / "tenants", audit_dir=directory,
                    audit_retention_days=30, decision_log_url="http://127.0.0.1:9/unreachable")
    runtime = Runtime(config)
    try:
        assert runtime.audit.maintenance.wait_idle()
        assert (directory / retention.CURSORS_DIR / "decision-log.json").exists()
        assert manifest(directory) == []
    finally:
        runtime.close()
