"""`audit verify` catches every kind of tampering, and names the file, line and seq."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz.audit import chain
from llm_authz.audit.keys import key_id
from llm_authz.audit import verify as verify_module
from llm_authz.audit.verify import verify
from llm_authz.cli import main
from tests.unit.audit_logs import REVISION, lines, make_log, rechain, records, rewrite, segments

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
PUB = KEY.public_key()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """60 decisions, signed checkpoints every 10, several segments."""
    directory = tmp_path / "audit"
    make_log(directory, 60, key=KEY)
    assert len(segments(directory)) >= 3
    report = verify([directory], [PUB], check_revisions=False)
    assert report.ok, report.problem
    verify_module.SPAN_BYTES, saved = 700, verify_module.SPAN_BYTES
    try:
        parallel = verify([directory], [PUB], check_revisions=False, workers=2)
    finally:
        verify_module.SPAN_BYTES = saved
    assert parallel == report
    return directory


def problem(directory: Path, keys=(PUB,)):
    report = verify([directory], list(keys), check_revisions=False)
    assert not report.ok, "tampering went unnoticed"
    # Checked in ranges by two worker processes, the log gives the same answer.
    saved = verify_module.SPAN_BYTES
    verify_module.SPAN_BYTES = 700
    try:
        parallel = verify([directory], list(keys), check_revisions=False, workers=2)
    finally:
        verify_module.SPAN_BYTES = saved
    assert parallel.problem == report.problem
    return report.problem


def edit_line(path: Path, index: int, new: bytes | None) -> None:
    data = lines(path)
    if new is None:
        del data[index]
    else:
        data[index] = new
    path.write_bytes(b"".join(data))


def first_decision_index(path: Path) -> int:
    return next(i for i, r in enumerate(records(path)) if r["kind"] == "decision")


def test_an_edited_record(log):
    seg = segments(log)[1]
    i = first_decision_index(seg) + 1
    edit_line(seg, i, lines(seg)[i].replace(b'"allowed":true', b'"allowed":false'))
    p = problem(log)
    assert (p.file, p.line, p.seq) == (str(seg), i + 1, records(seg)[i]["seq"])
    assert "edited" in p.message


def test_a_removed_record(log):
    seg = segments(log)[1]
    i = first_decision_index(seg) + 1
    removed_seq = records(seg)[i]["seq"]
    edit_line(seg, i, None)
    p = problem(log)
    assert (p.file, p.line, p.seq) == (str(seg), i + 1, removed_seq + 1)
    assert f"expected seq {removed_seq}" in p.message and "removed" in p.message


def test_an_inserted_record_with_a_valid_hash(log):
    seg = segments(log)[1]
    i = first_decision_index(seg) + 1
    recs = records(seg)
    forged = {**recs[i], "decision_id": "forged", "seq": recs[i]["seq"], "prev_hash": recs[i - 1]["hash"]}
    edit_line(seg, i, chain.encode(forged)[0] + lines(seg)[i])
    p = problem(log)
    assert (p.file, p.line) == (str(seg), i + 2)
    assert "inserted" in p.message


def test_a_duplicated_record(log):
    seg = segments(log)[1]
    i = first_decision_index(seg) + 1
    edit_line(seg, i, lines(seg)[i] * 2)
    p = problem(log)
    assert (p.file, p.line, p.seq) == (str(seg), i + 2, records(seg)[i]["seq"])
    assert "duplicate" in p.message


def test_reordered_records(log):
    seg = segments(log)[1]
    i = first_decision_index(seg) + 1
    data = lines(seg)
    data[i], data[i + 1] = data[i + 1], data[i]
    seg.write_bytes(b"".join(data))
    p = problem(log)
    assert (p.file, p.line) == (str(seg), i + 1)
    assert "moved" in p.message


def test_a_segment_that_does_not_continue_the_one_before(log):
    seg = segments(log)[1]
    recs = records(seg)
    recs[0]["prev_hash"] = "f" * 64
    rewrite(seg, recs)
    rechain(log, start_file=1, start_line=1)
    p = problem(log)
    assert (p.file, p.line, p.seq) == (str(seg), 1, recs[0]["seq"])
    assert f"does not continue {segments(log)[0].name}" in p.message


def test_a_missing_segment_file(log):
    seg = segments(log)[1]
    seg.unlink()
    p = problem(log)
    assert p.file == str(segments(log)[1]) and p.line == 1
    assert "segment file missing" in p.message


def test_swapped_segment_files(log):
    a, b = segments(log)[1:3]
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    p = problem(log)
    assert (p.file, p.line) == (str(a), 1)


def test_the_first_segment_removed(log):
    segments(log)[0].unlink()
    p = problem(log)
    assert "does not start at seq 1" in p.message


def test_records_cut_from_the_end_of_a_closed_segment(log):
    seg = segments(log)[0]
    edit_line(seg, -1, None)
    p = problem(log)
    assert p.file in (str(seg), str(segments(log)[1]))


def test_a_torn_last_line(log):
    seg = segments(log)[-1]
    seg.write_bytes(seg.read_bytes()[:-10])
    p = problem(log)
    assert (p.file, p.line) == (str(seg), len(lines(seg)))
    assert "incomplete last line" in p.message


def test_a_bad_signature(log):
    seg = segments(log)[1]
    recs = records(seg)
    i = next(i for i, r in enumerate(recs) if r["kind"] == "checkpoint")
    sig = bytearray(chain.unb64(recs[i]["signature"]))
    sig[0] ^= 1
    recs[i]["signature"] = chain.b64(bytes(sig))
    rewrite(seg, recs)
    rechain(log, start_file=1, start_line=i)
    p = problem(log)
    assert (p.file, p.line, p.seq) == (str(seg), i + 1, recs[i]["seq"])
    assert "signature does not verify" in p.message
    assert not verify([log], [], check_revisions=False).ok  # caught without a pinned key too


def test_a_signature_with_a_character_outside_base64_is_malformed(log):
    """Signatures and keys are strict base64: a stray character is never skipped over."""
    seg = segments(log)[1]
    recs = records(seg)
    i = next(i for i, r in enumerate(recs) if r["kind"] == "checkpoint")
    recs[i]["signature"] = recs[i]["signature"][:8] + "!" + recs[i]["signature"][8:]
    rewrite(seg, recs)
    rechain(log, start_file=1, start_line=i)
    p = problem(log)
    assert (p.file, p.line) == (str(seg), i + 1)
    assert p.message.endswith("the checkpoint's key or signature is malformed")


def test_only_a_line_laid_out_as_the_writer_writes_it_is_a_whole_record():
    line, digest = chain.encode({"kind": "decision", "seq": 1})
    assert chain.line_hash_ok(line)
    assert not chain.line_hash_ok(line.replace(b',"hash":"', b',"hasx":"'))
    assert not chain.line_hash_ok(line[:-10] + b"\xff" + line[-9:])  # not ASCII where the hash is
    only_suffix = b',"hash":"' + hashlib.sha256(b"}").hexdigest().encode() + b'"}\n'
    assert not chain.line_hash_ok(only_suffix)


def test_a_missing_signature(log):
    seg = segments(log)[1]
    recs = records(seg)
    i = next(i for i, r in enumerate(recs) if r["kind"] == "checkpoint")
    for field in ("signature", "key_id", "public_key"):
        del recs[i][field]
    rewrite(seg, recs)
    rechain(log, start_file=1, start_line=i)
    p = problem(log)
    assert (p.file, p.line) == (str(seg), i + 1)
    assert "no signature" in p.message


def test_the_wrong_key(log):
    p = problem(log, keys=[OTHER.public_key()])
    assert p.line > 0
    assert f"signed by key {key_id(PUB)}, not by the given key {key_id(OTHER.public_key())}" in p.message


def test_a_forged_record_with_a_recomputed_chain_is_caught_by_the_signature(log):
    seg = segments(log)[1]
    recs = records(seg)
    i = first_decision_index(seg) + 1
    recs[i]["allowed"] = False
    recs[i]["status"] = 403
    rewrite(seg, recs)
    rechain(log, start_file=1, start_line=i)
    # Every hash and link is consistent again...
    p = problem(log)
    # ...but the first checkpoint after the edit no longer verifies.
    cp = next(j for j in range(i, len(recs)) if records(seg)[j]["kind"] == "checkpoint")
    assert (p.file, p.line) == (str(seg), cp + 1)
    assert "signature does not verify" in p.message


def test_a_forger_who_re_signs_with_their_own_key_is_caught_by_the_pinned_key(log):
    seg = segments(log)[1]
    recs = records(seg)
    i = first_decision_index(seg) + 1
    recs[i]["allowed"] = False
    rewrite(seg, recs)
    forged_pub = chain.b64(OTHER.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    for path in segments(log):
        rs = records(path)
        for r in rs:
            if r["kind"] == "checkpoint":
                r["public_key"], r["key_id"] = forged_pub, key_id(OTHER.public_key())
        rewrite(path, rs)
    rechain(log, key=OTHER)
    assert verify([log], [], check_revisions=False).ok  # self-consistent: why auditors pin the key
    assert "not by the given key" in problem(log).message


def test_an_unsigned_tail_is_a_warning_not_a_failure(log):
    seg = segments(log)[-1]
    edit_line(seg, -1, None)  # the shutdown checkpoint, as after a crash
    report = verify([log], [PUB], check_revisions=False)
    assert report.ok
    assert "not yet covered by a signed checkpoint" in report.warnings[0]


def test_a_log_without_signatures_fails_when_a_key_is_required(tmp_path):
    make_log(tmp_path, 5)
    assert verify([tmp_path], check_revisions=False).ok
    assert "no signature" in problem(tmp_path).message


# ---- the command --------------------------------------------------------------------------------

@pytest.fixture
def pub_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.pub.pem"
    path.write_bytes(PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_cli_checks_that_the_revisions_named_are_archived_and_intact(log, pub_file, capsys):
    assert main(["audit", "verify", "--public-key", str(pub_file), str(log)]) == 0
    (log / "revisions" / f"{REVISION}.json").write_bytes(b"{}")  # not the revision's content
    assert main(["audit", "verify", "--public-key", str(pub_file), str(log)]) == 1
    assert "does not match its hash" in capsys.readouterr().out
    (log / "revisions" / f"{REVISION}.json").unlink()
    assert main(["audit", "verify", "--public-key", str(pub_file), str(log)]) == 1
    assert "is not archived" in capsys.readouterr().out


def test_cli_names_file_line_and_seq_and_exits_1(log, pub_file, capsys):
    seg = segments(log)[1]
    edit_line(seg, 2, lines(seg)[2].replace(b'"allowed":true', b'"allowed":false'))
    code = main(["audit", "verify", "--public-key", str(pub_file), *map(str, segments(log))])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith(f"FAIL: {seg}:3: seq {records(seg)[2]['seq']}: ")


def test_cli_on_segment_files_and_json_report(log, pub_file, capsys):
    files = [str(p) for p in segments(log)]
    assert main(["audit", "verify", "--public-key", str(pub_file), "--json", *files]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["ok"] and report["decisions"] == 60 and report["key_ids"] == [key_id(PUB)]


def test_cli_end_to_end_with_keygen(tmp_path):
    cli = [str(Path(sys.executable).parent / "llm-authz")]
    out = subprocess.run([*cli, "audit", "keygen", str(tmp_path / "k.pem")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    from llm_authz.audit.keys import load_private_key
    make_log(tmp_path / "audit", 30, key=load_private_key(tmp_path / "k.pem"))
    ok = subprocess.run([*cli, "audit", "verify", "--public-key", str(tmp_path / "k.pub.pem"), str(tmp_path / "audit")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: ") and "30 decisions" in ok.stdout
    again = subprocess.run([*cli, "audit", "keygen", str(tmp_path / "k.pem")], capture_output=True, text=True)
    assert again.returncode == 2 and "not overwriting" in again.stderr


def test_cli_unreadable_key_or_path_is_exit_2(tmp_path, capsys):
    (tmp_path / "bad.pem").write_text("nope")
    assert main(["audit", "verify", "--public-key", str(tmp_path / "bad.pem"), str(tmp_path)]) == 2
    assert main(["audit", "verify", str(tmp_path / "missing")]) == 1
    assert "no such file" in capsys.readouterr().out
