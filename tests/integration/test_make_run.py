"""`make run`'s stack: it starts, the curl lines it prints answer as their comments say, Ctrl-C stops it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from llm_authz.demo.processes import REPO, free_port

pytestmark = pytest.mark.integration


def test_printed_curl_lines_work_and_ctrl_c_stops_everything(tmp_path):
    ports = [free_port() for _ in range(5)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_authz.demo.stack", "--ingress-port", str(ports[0]), "--authz-port", str(ports[1]),
         "--upstream-port", str(ports[2]), "--admin-port", str(ports[3]), "--metrics-port", str(ports[4]),
         "--audit-dir", str(tmp_path / "audit")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the stack exited early:\n" + "".join(lines)
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        pid = re.search(r"llm-authz pid (\d+): edits .* `kill -HUP (\d+)` reloads", "".join(lines))
        assert pid and pid.group(1) == pid.group(2)
        assert b"llm_authz\0serve" in open(f"/proc/{pid.group(1)}/cmdline", "rb").read()
        pairs = []
        comment = None
        for line in lines:
            if line.startswith("# "):
                comment = line
            elif line.startswith(("curl ", "python3 ")) and comment:
                pairs.append((comment, line.strip()))
        assert len(pairs) >= 6
        for comment, command in pairs:
            out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30).stdout
            status = int(re.match(r"HTTP/1.1 (\d+)", out).group(1))
            if comment.startswith("# allowed"):
                assert status == 200, (comment, out)
            else:
                expected = int(re.search(r"denied (\d+)", comment).group(1))
                code = re.search(r"denied \d+ (\w+)", comment).group(1)
                assert status == expected and f'"code":"{code}"' in out, (comment, out)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
