"""One audit directory, several chains (`serve --processes N`): written apart, read and verified as one log."""

from __future__ import annotations

import shutil

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz import cli
from llm_authz.audit import chain, reader
from llm_authz.audit.export import opa_events
from llm_authz.audit.verify import verify
from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.errors import AuditWriteError
from tests.unit.audit_logs import SOURCE, decision, lines, records, rewrite

KEY = Ed25519PrivateKey.generate()


def _at(i: int, chain_name: str) -> dict:
    # Decision i happens at second i: the two chains interleave in time.
    rec = decision(i)
    rec["time"] = f"2026-01-01T00:00:{i:02d}.000000Z"
    rec["decision_id"] = f"{chain_name}-{i}"
    return rec


def write_chain(directory, chain_name, numbers, **options):
    options = {"checkpoint_records": 4, "segment_bytes": 4096, "commit_window_ms": 0, "signing_key": KEY, **options}
    log = AuditLog(directory, AuditOptions(**options), chain_name=chain_name)
    log.archive_revision(SOURCE)
    for i in numbers:
        log.append(_at(i, chain_name))
    log.close()


@pytest.fixture()
def two_chains(tmp_path):
    write_chain(tmp_path, "main", range(0, 40, 2))
    write_chain(tmp_path, "w1", range(1, 40, 2))
    return tmp_path


def chain_files(directory, name):
    return [p for p in sorted(directory.iterdir()) if chain.is_segment_name(p.name, name)]


def test_segment_names_per_chain():
    assert chain.segment_name(1) == "decisions-00000000000000000001.jsonl"
    assert chain.segment_name(7, "w1") == "decisions-w1-00000000000000000007.jsonl"
    assert chain.parse_segment_name("decisions-w12-00000000000000000007.jsonl") == ("w12", 7)
    assert chain.parse_segment_name("decisions-00000000000000000001.jsonl") == ("main", 1)
    for bad in ("decisions-main-00000000000000000001.jsonl", "decisions-W1-00000000000000000001.jsonl",
                "decisions-1.jsonl", "decisions-00000000000000000001.jsonl.tmp", "other.jsonl"):
        assert chain.parse_segment_name(bad) is None, bad
    assert chain.chain_of("decisions-w12-00000000000000000007.jsonl") == "w12"
    assert chain.chain_of("decisions-00000000000000000001.jsonl") == "main"
    assert chain.chain_of("other.jsonl") is None
    assert [chain.worker_chain(i) for i in range(3)] == ["main", "w1", "w2"]
    assert chain.lock_name("main") == ".lock" and chain.lock_name("w3") == ".lock-w3"


def test_each_chain_has_its_own_files_lock_seq_and_header(two_chains):
    main, w1 = chain_files(two_chains, "main"), chain_files(two_chains, "w1")
    assert main and w1 and not set(main) & set(w1)
    assert (two_chains / ".lock").exists() and (two_chains / ".lock-w1").exists()
    first_main, first_w1 = records(main[0])[0], records(w1[0])[0]
    assert first_main["seq"] == first_w1["seq"] == 1 and first_main["prev_hash"] == first_w1["prev_hash"] == chain.GENESIS
    assert "chain" not in first_main
    assert all(records(p)[0]["chain"] == "w1" for p in w1)


def test_one_writer_per_chain_but_chains_write_side_by_side(tmp_path):
    a = AuditLog(tmp_path, AuditOptions(commit_window_ms=0), chain_name="main")
    b = AuditLog(tmp_path, AuditOptions(commit_window_ms=0), chain_name="w1")
    try:
        with pytest.raises(AuditWriteError, match="chain w1"):
            AuditLog(tmp_path, AuditOptions(commit_window_ms=0), chain_name="w1")
        a.append(_at(0, "main"))
        b.append(_at(1, "w1"))
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError):
        AuditLog(tmp_path, chain_name="../x")
    # A restart of each chain continues that chain only.
    write_chain(tmp_path, "w1", [2])
    assert [r["seq"] for r in reader.iter_records([chain_files(tmp_path, "w1")[-1]], kinds=None)][-1] > 3
    assert verify([tmp_path]).ok  # unsigned here: no key to pin


def test_readers_merge_the_chains_by_time(two_chains):
    ids = [r["decision_id"] for r in reader.iter_records([two_chains])]
    assert ids == [f"{'main' if i % 2 == 0 else 'w1'}-{i}" for i in range(40)]
    entries = list(reader.iter_entries([two_chains], kinds=[chain.DECISION]))
    assert {e.chain for e in entries} == {"main", "w1"}
    events = list(opa_events([two_chains]))
    assert [e["decision_id"] for e in events] == ids
    assert {e["custom"]["chain"] for e in events} == {"main", "w1"}


def test_verify_takes_the_directory_as_one_log(two_chains, capsys):
    report = verify([two_chains], public_keys=[KEY.public_key()])
    assert report.ok, report.problem
    assert report.decisions == 40
    assert [(c["name"], c["decisions"], c["first_seq"]) for c in report.chains] == [("main", 20, 1), ("w1", 20, 1)]
    assert cli.main(["audit", "verify", str(two_chains)]) == 0
    assert "2 chains (main seq 1.." in capsys.readouterr().out


def test_a_tampered_record_in_one_chain_fails_the_log(two_chains, capsys):
    path = chain_files(two_chains, "w1")[0]
    recs = records(path)
    target = next(r for r in recs if r.get("kind") == chain.DECISION)
    target["allowed"] = False
    raw = lines(path)
    raw[recs.index(target)] = raw[recs.index(target)].replace(b'"allowed":true', b'"allowed":false')
    path.write_bytes(b"".join(raw))
    report = verify([two_chains])
    assert not report.ok and report.problem.file == str(path) and "edited" in report.problem.message
    assert cli.main(["audit", "verify", str(two_chains)]) == 1
    assert cli.main(["replay", str(two_chains), "--jobs", "1"]) == 1
    assert "does not verify" in capsys.readouterr().err


def test_a_chain_missing_its_first_segment_fails(two_chains):
    first = chain_files(two_chains, "w1")[0]
    first.unlink()
    report = verify([two_chains])
    assert not report.ok and "does not start at seq 1" in report.problem.message


def test_a_segment_moved_to_another_chain_is_caught(tmp_path):
    write_chain(tmp_path, "w2", range(3))
    (src,) = chain_files(tmp_path, "w2")
    moved = tmp_path / chain.segment_name(1)  # renamed into chain main
    shutil.move(src, moved)
    report = verify([tmp_path])
    assert not report.ok and "moved from one chain to another" in report.problem.message
    # A header rewritten (and rehashed) to name yet another chain still disagrees with the file name.
    recs = records(moved)
    recs[0]["chain"] = "w3"
    rewrite(moved, recs)
    assert "moved from one chain" in verify([tmp_path]).problem.message


def test_replay_accepts_the_directory_as_one_log(two_chains, capsys):
    assert cli.main(["replay", str(two_chains), "--format", "json", "--jobs", "1"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["records"] == 40 and not out["mismatches"]


def test_replay_of_a_candidate_reports_exactly_the_decisions_it_changes(two_chains, tmp_path, capsys):
    def impact(rule: str) -> dict:
        candidate = tmp_path / f"candidate-{len(rule)}"
        candidate.mkdir()
        (candidate / "authz.rego").write_text(f"package llm.authz\n\n{rule}\n")
        cli.main(["replay", str(two_chains), "--policies", str(candidate), "--format", "json", "--jobs", "1"])
        return orjson.loads(capsys.readouterr().out)

    unchanged = impact('decision := {"allow": true}')
    assert unchanged["totals"] == {"same": 40, "flip": 0, "unreproducible": 0}
    closed = impact('decision := {"allow": false, "status": 403, "reasons": ["closed"]}')
    assert closed["totals"] == {"same": 0, "flip": 40, "unreproducible": 0}
    assert closed["summary"] == [{"tenant": "acme", "model": "gpt-4o", "reason": "closed",
                                  "direction": "allow→deny", "count": 40}]
