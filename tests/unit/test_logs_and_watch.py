"""Log line formats, and the watcher seeing a kubelet-style swap of a tenants directory."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from llm_authz import logs
from llm_authz.watch import DirectoryWatcher
from tests.kubelet_volume import KubeletVolume


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]):
    yield lambda: capsys.readouterr().err
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def test_json_lines_carry_the_events_fields(stderr) -> None:
    logs.configure("info", "json")
    logging.getLogger("llm_authz.check").warning("policy error, denying: %s", "x",
                                                 extra={"decision_id": "d-1", "trace_id": None})
    line = json.loads(stderr().strip())
    assert line["level"] == "WARNING" and line["logger"] == "llm_authz.check"
    assert line["message"] == "policy error, denying: x" and line["decision_id"] == "d-1"
    assert line["time"].endswith("+00:00")


def test_text_lines_for_a_terminal_and_json_when_stderr_is_not_one(stderr) -> None:
    logs.configure("info", "text")
    logging.getLogger("llm_authz").info("hello")
    assert stderr().rstrip().endswith("INFO llm_authz: hello")
    assert logs.default_format() == "json"  # pytest's captured stderr is not a terminal


def test_a_kubelet_swap_of_the_tenants_directory_is_one_change(tmp_path: Path) -> None:
    volume = KubeletVolume(tmp_path / "tenants", {"a.yaml": "id: a\n"})
    changed = threading.Event()
    calls = []
    watcher = DirectoryWatcher([volume.root], lambda: (calls.append(1), changed.set()))
    watcher.start()
    try:
        threading.Event().wait(0.3)  # the watch is set up
        volume.update({"a.yaml": "id: a\ntier: free\n", "keys/a.jwks.json": "{}"})
        assert changed.wait(10)
        threading.Event().wait(0.5)
        assert calls == [1]
    finally:
        watcher.stop()


def test_a_watched_file_replaced_by_a_rename_is_seen_every_time(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(b"1")
    calls = []
    seen = threading.Event()
    watcher = DirectoryWatcher([bundle], lambda: (calls.append(1), seen.set()))
    watcher.start()
    try:
        threading.Event().wait(0.3)
        for content in (b"2", b"3"):  # as `policy build -o` over the same path by a rename would
            seen.clear()
            (tmp_path / "new").write_bytes(content)
            (tmp_path / "new").rename(bundle)
            assert seen.wait(10)
        (tmp_path / "unrelated.txt").write_text("x")  # a neighbour is not the bundle
        threading.Event().wait(0.6)
        assert len(calls) == 2
    finally:
        watcher.stop()
