"""The decision-log shipper against a collector in the test: order, gzip body, retries, resume, chains, cursor."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llm_authz.audit.retention import cursor_limits
from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.decisionlog.cursor import Cursor, CursorError
from llm_authz.decisionlog.shipper import Shipper, ShipperOptions
from tests.unit.audit_logs import SOURCE, decision, make_log

FAST = ShipperOptions(batch_records=7, min_backoff_seconds=0.01, max_backoff_seconds=0.05, poll_seconds=0.01)


class Collector:
    def __init__(self, fail_first: int = 0, status: int = 500) -> None:
        self.batches: list[list[dict]] = []
        self.fail_left = fail_first
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["content-length"]))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                if outer.fail_left > 0:
                    outer.fail_left -= 1
                    self.send_response(status)
                else:
                    outer.batches.append(json.loads(gzip.decompress(raw)))
                    self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def ids(self) -> list[str]:
        return [e["decision_id"] for batch in self.batches for e in batch]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def drain(shipper: Shipper) -> None:
    while shipper.step():
        pass


def test_ships_every_decision_in_order_as_gzip_opa_events(tmp_path, collector):
    make_log(tmp_path, n=40)  # ~3 KiB segments: several files, checkpoints between decisions
    shipper = Shipper(tmp_path, collector.url, FAST)
    drain(shipper)
    shipper.close()
    assert collector.ids == [f"d-{i}" for i in range(40)]
    assert all(len(b) <= 7 for b in collector.batches)
    assert collector.headers[0]["content-encoding"] == "gzip"
    assert collector.headers[0]["content-type"] == "application/json"
    event = collector.batches[0][0]
    assert event["path"] == "llm/authz/decision" and event["result"] == {"allow": True}
    assert event["timestamp"] == "2026-01-01T00:00:00.000000Z" and event["labels"]["id"] == "llm-authz"


def test_a_failing_collector_gets_the_same_batch_again_until_it_takes_it(tmp_path):
    make_log(tmp_path, n=20)
    collector = Collector(fail_first=5, status=503)
    try:
        shipper = Shipper(tmp_path, collector.url, FAST)
        drain(shipper)
        shipper.close()
        assert collector.ids == [f"d-{i}" for i in range(20)]  # nothing lost, nothing twice
        assert len(collector.headers) == len(collector.batches) + 5
    finally:
        collector.close()


def test_resumes_from_the_cursor_after_a_restart(tmp_path, collector):
    log = make_log(tmp_path, n=10, close=False)
    first = Shipper(tmp_path, collector.url, FAST)
    drain(first)
    first.close()
    for i in range(10, 25):
        log.append(decision(i))
    log.close()
    assert collector.ids == [f"d-{i}" for i in range(10)]
    second = Shipper(tmp_path, collector.url, FAST)
    drain(second)
    second.close()
    assert collector.ids == [f"d-{i}" for i in range(25)]
    # The cursor is the one docs/audit.md describes, and retention reads it.
    doc = json.loads((tmp_path / "cursors" / "decision-log.json").read_text())
    assert set(doc) == {"name", "chains", "updated"} and doc["chains"]["main"]["segment"].startswith("decisions-")
    assert cursor_limits(tmp_path)["main"] == doc["chains"]["main"]["seq"]


def test_follows_a_live_log_across_rotation_and_compression(tmp_path, collector):
    log = AuditLog(tmp_path, AuditOptions(segment_bytes=4096, commit_window_ms=0, checkpoint_records=5,
                                          compress="zstd"))
    log.archive_revision(SOURCE)
    shipper = Shipper(tmp_path, collector.url, FAST)
    for i in range(60):
        log.append(decision(i))
        if i % 9 == 0:
            drain(shipper)
    log.close()
    drain(shipper)
    shipper.close()
    assert collector.ids == [f"d-{i}" for i in range(60)]


def test_chains_are_merged_by_time_each_in_seq_order(tmp_path, collector):
    main = AuditLog(tmp_path, AuditOptions(commit_window_ms=0))
    w1 = AuditLog(tmp_path, AuditOptions(commit_window_ms=0), chain_name="w1")
    for i in range(6):
        rec = decision(i)
        rec["time"] = f"2026-01-01T00:00:0{i}.000000Z"
        (main if i % 2 == 0 else w1).append(rec)
    main.close()
    w1.close()
    shipper = Shipper(tmp_path, collector.url, FAST)
    drain(shipper)
    shipper.close()
    assert collector.ids == [f"d-{i}" for i in range(6)]
    assert {e["custom"]["chain"] for b in collector.batches for e in b} == {"main", "w1"}
    assert set(json.loads((tmp_path / "cursors" / "decision-log.json").read_text())["chains"]) == {"main", "w1"}


def test_an_unreadable_cursor_stops_shipping_rather_than_resending_or_skipping(tmp_path):
    (tmp_path / "cursors").mkdir()
    (tmp_path / "cursors" / "decision-log.json").write_text("{not json")
    with pytest.raises(CursorError, match="not a cursor"):
        Cursor(tmp_path, "decision-log").load()


def test_cursor_is_replaced_atomically(tmp_path):
    cursor = Cursor(tmp_path, "decision-log")
    from llm_authz.decisionlog.cursor import Position

    cursor.save({"main": Position(5, "decisions-00000000000000000001.jsonl")})
    cursor.save({"main": Position(9, "decisions-00000000000000000001.jsonl")})
    assert cursor.load()["main"].seq == 9
    assert [p.name for p in (tmp_path / "cursors").iterdir()] == ["decision-log.json"]
