"""Closed segments are compressed in the background, atomically, and every reader takes them."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import orjson
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llm_authz import metrics
from llm_authz.audit import compress, reader, segments
from llm_authz.audit import verify as verify_module
from llm_authz.audit.export import opa_events
from llm_authz.audit.verify import verify
from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.cli import main
from llm_authz.config import Config
from llm_authz.errors import AuditFormatError
from tests.unit.audit_logs import SOURCE, decision, make_log

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("decisions-"))


def compressed_log(directory: Path, codec: str, n: int = 60) -> AuditLog:
    log = make_log(directory, n, key=KEY, close=False, compress=codec)
    assert log.maintenance.wait_idle()
    log.close()
    return log


def unpack(path: Path) -> bytes:
    return b"".join(segments.iter_chunks(path))


def repack(path: Path, data: bytes) -> None:
    if path.suffix == ".zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(gzip.compress(data))


@pytest.mark.parametrize("codec,suffix", [("zstd", ".zst"), ("gzip", ".gz")])
def test_closed_segments_are_compressed_and_read_like_plain_ones(tmp_path, codec, suffix):
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    make_log(plain, 60, key=KEY)
    before = metrics.AUDIT_COMPRESSED_IN_BYTES._value.get()
    compressed_log(packed, codec)
    names = files(packed)
    # Every closed segment is compressed; the open (newest) one stays plain for the writer.
    assert len(names) >= 3 and all(n.endswith(".jsonl" + suffix) for n in names[:-1]), names
    assert names[-1].endswith(".jsonl")
    assert [n.removesuffix(suffix) for n in names[:-1]] == files(plain)[:len(names) - 1]
    assert not [p for p in packed.iterdir() if p.name.endswith(".tmp")]
    assert metrics.AUDIT_COMPRESSED_IN_BYTES._value.get() > before
    # The decompressed bytes are the plain file's bytes, so the chain verifies unchanged...
    for name in names[:-1]:
        assert unpack(packed / name).splitlines()[0].startswith(b'{"format":"llm-authz/audit/v1"')
    report = verify([packed], [PUB])
    assert report.ok, report.problem
    assert report.records == verify([plain], [PUB]).records and report.decisions == 60
    verify_module.SPAN_BYTES, saved = 700, verify_module.SPAN_BYTES
    try:  # ranges of the plain segment, whole compressed ones, in two processes: the same report
        assert verify([packed], [PUB], workers=2) == report
    finally:
        verify_module.SPAN_BYTES = saved
    # ...and every reader gives the same records, in order.
    def strip(recs):
        return [{k: v for k, v in r.items() if k not in ("time", "hash", "prev_hash")} for r in recs]
    got = list(reader.iter_records([packed], kinds=None))
    assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
    assert [r["decision_id"] for r in reader.iter_records([packed])] == [f"d-{i}" for i in range(60)]
    assert [e["decision_id"] for e in opa_events([packed])] == [f"d-{i}" for i in range(60)]
    # Segment files given one by one, compressed or not, read the same.
    given = [packed / n for n in names]
    assert verify(given, [PUB]).ok
    assert len(list(reader.iter_records(given))) == 60


def test_cli_verify_export_and_replay_read_compressed_segments(tmp_path, capsys):
    directory = tmp_path / "audit"
    compressed_log(directory, "zstd")
    assert any(n.endswith(".zst") for n in files(directory))
    assert main(["audit", "verify", "--jobs", "2", str(directory)]) == 0
    assert "ok: " in capsys.readouterr().out
    out = tmp_path / "events.jsonl"
    assert main(["audit", "export", "-o", str(out), str(directory)]) == 0
    assert len(out.read_bytes().splitlines()) == 60
    assert main(["replay", "--jobs", "1", "--format", "json", str(directory)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 60 and report["totals"]["match"] == 60 and report["verified"]


def test_an_edited_record_in_a_compressed_segment_is_caught(tmp_path):
    directory = tmp_path / "audit"
    compressed_log(directory, "zstd")
    target = directory / files(directory)[1]
    data = unpack(target).splitlines(keepends=True)
    i = next(i for i, line in enumerate(data) if b'"kind":"decision"' in line)
    seq = orjson.loads(data[i])["seq"]
    data[i] = data[i].replace(b'"allowed":true', b'"allowed":false')
    repack(target, b"".join(data))
    report = verify([directory], [PUB])
    assert not report.ok
    assert (report.problem.file, report.problem.line, report.problem.seq) == (str(target), i + 1, seq)
    assert "edited" in report.problem.message


def test_a_corrupt_compressed_file_is_reported_not_raised(tmp_path):
    directory = tmp_path / "audit"
    compressed_log(directory, "zstd")
    target = directory / files(directory)[0]
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw[: len(raw) - 5]))
    report = verify([directory], [PUB])
    assert not report.ok and report.problem.file == str(target)
    assert "compressed segment cannot be read" in report.problem.message or "hash" in report.problem.message


def test_a_crash_mid_compression_loses_nothing_and_is_finished_at_start(tmp_path):
    directory = tmp_path / "audit"
    make_log(directory, 60, key=KEY)
    closed = sorted(directory.glob("decisions-*.jsonl"))[:-1]
    # A crash after the rename, before the plain file was removed: both are there.
    both = closed[0]
    zst = compress.compressed_path(both, "zstd")
    zst.write_bytes(zstandard.ZstdCompressor().compress(both.read_bytes()))
    # A crash while the copy was being written: a torn .tmp (not a segment to any reader).
    torn = closed[1].with_name(closed[1].name + ".zst.tmp")
    torn.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    assert [s.path for s in segments.list_segments(directory)][:2] == closed[:2]  # the plain files win
    assert verify([directory], [PUB]).ok
    log = AuditLog(directory, AuditOptions(signing_key=KEY, compress="zstd", commit_window_ms=0))
    assert log.maintenance.wait_idle()
    log.append(decision(99))
    log.close()
    names = files(directory)
    assert not torn.exists()
    assert all(n.endswith(".zst") for n in names[:-1]) and len(names) == len(closed) + 1
    report = verify([directory], [PUB])
    assert report.ok and report.decisions == 61


def test_the_service_config_compresses_with_zstd_by_default(tmp_path):
    config = Config(audit_dir=tmp_path / "audit", audit_segment_bytes=4096)
    assert config.audit_compress == "zstd"
    log = AuditLog.from_config(config)
    try:
        assert log.options.compress == "zstd" and log.maintenance.codec == "zstd"
    finally:
        log.close()
    with pytest.raises(ValueError):
        Config(audit_compress="xz")
    shutil.rmtree(tmp_path / "audit")


def test_each_chain_compresses_its_own_closed_segments(tmp_path):
    directory = tmp_path / "audit"
    opts = AuditOptions(signing_key=KEY, compress="zstd", commit_window_ms=0, checkpoint_records=10,
                        segment_bytes=4096)
    logs = [AuditLog(directory, opts), AuditLog(directory, opts, chain_name="w1")]
    for log in logs:
        log.archive_revision(SOURCE)
    for i in range(40):
        for n, log in enumerate(logs):
            log.append(decision(100 * n + i))
    for log in logs:
        assert log.maintenance.wait_idle()
        log.close()
    by_chain: dict[str, list[segments.Segment]] = {}
    for seg in segments.list_segments(directory):
        by_chain.setdefault(seg.chain, []).append(seg)
    assert set(by_chain) == {"main", "w1"}
    for segs in by_chain.values():
        assert len(segs) >= 3 and all(s.compressed for s in segs[:-1]) and not segs[-1].compressed
    report = verify([directory], [PUB])
    assert report.ok, report.problem
    assert report.decisions == 80 and [c["name"] for c in report.chains] == ["main", "w1"]
    assert len(list(reader.iter_records([directory]))) == 80


def test_storage_gauges_follow_the_directory(tmp_path):
    directory = tmp_path / "audit"
    log = make_log(directory, 60, key=KEY, close=False, compress="zstd")
    assert log.maintenance.wait_idle()
    on_disk = {form: sum(s.path.stat().st_size for s in segments.list_segments(directory)
                         if s.compressed == (form == "compressed")) for form in ("plain", "compressed")}
    log.close()
    assert metrics.AUDIT_DISK_BYTES.labels(form="compressed")._value.get() == on_disk["compressed"] > 0
    assert metrics.AUDIT_DISK_BYTES.labels(form="plain")._value.get() == on_disk["plain"] > 0
    first = next(reader.iter_records([directory], kinds=None))
    from llm_authz.audit.retention import _epoch
    assert metrics.AUDIT_OLDEST_RECORD._value.get() == _epoch(first["time"])
    assert 0 < metrics.AUDIT_FS_FREE_BYTES._value.get() <= metrics.AUDIT_FS_SIZE_BYTES._value.get()


def test_a_reader_that_stops_early_or_hits_a_bad_file_leaves_no_thread_behind(tmp_path, monkeypatch):
    import threading

    directory = tmp_path / "audit"
    log = make_log(directory, 3000, key=KEY, close=False, compress="zstd", segment_bytes=1 << 20,
                   checkpoint_records=1000)
    assert log.maintenance.wait_idle()
    log.close()
    seg = next(s for s in segments.list_segments(directory) if s.compressed)
    monkeypatch.setattr(segments, "_ZSTD_INPUT", 256)  # many small chunks: the decompressing thread runs ahead
    assert len(list(segments.iter_chunks(seg.path))) > 5
    before = threading.active_count()
    for _ in range(3):
        lines = segments.iter_line_views(seg.path)
        assert bytes(next(lines)).startswith(b'{"format"')
        lines.close()  # the reader stops after one line
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(seg.path.read_bytes()[:-20])
    with pytest.raises(AuditFormatError):
        list(segments.iter_line_views(bad))
    assert threading.active_count() == before


def test_a_segment_compressed_after_it_was_listed_is_read_from_its_compressed_copy(tmp_path, monkeypatch):
    directory = tmp_path / "audit"
    make_log(directory, 60, key=KEY)
    listed = segments.list_segments(directory)
    real = segments.list_segments

    def listed_then_compressed(where):
        found = real(where)
        for seg in found[:-1]:
            if not seg.compressed and seg.path.exists():
                compress.compress_segment(seg.path, "zstd")  # the service compresses it right after the listing
        return found

    monkeypatch.setattr(segments, "list_segments", listed_then_compressed)
    assert [r["decision_id"] for r in reader.iter_records([directory])] == [f"d-{i}" for i in range(60)]
    for seg in listed[:-1]:
        assert not seg.path.exists()
    monkeypatch.setattr(segments, "list_segments", real)
    for seg in segments.list_segments(directory)[:-1]:  # back to plain, then the race again for verify
        plain = directory / seg.name
        plain.write_bytes(b"".join(segments.iter_chunks(seg.path)))
        seg.path.unlink()
    real_tasks = verify_module._tasks

    def tasks_then_compressed(files, pinned, span_bytes):
        made = real_tasks(files, pinned, 700)  # 700-byte ranges of the plain files...
        for path in files:
            if path != files[-1] and path.exists():
                compress.compress_segment(path, "zstd")  # ...which are compressed before they are read
        return made

    monkeypatch.setattr(verify_module, "_tasks", tasks_then_compressed)
    report = verify([directory], [PUB], workers=1)
    assert report.ok, report.problem
    assert report.decisions == 60 and all(s.compressed for s in segments.list_segments(directory)[:-1])
