"""A decision-log collector, run as its own process by the tests: `python -m tests.decision_log_collector PORT OUT`.

It accepts what OPA's decision-log plugin sends (POST, `Content-Encoding: gzip`, a JSON array of
events), appends each event as one JSON line to OUT (flushed and fsynced before it answers 204),
and answers 400 to anything it cannot read. Stopping it with SIGKILL loses nothing it answered.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    port, out_path = int(sys.argv[1]), sys.argv[2]
    out = open(out_path, "ab")  # noqa: SIM115 - lives as long as the process

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                if self.headers.get("content-encoding") == "gzip":
                    raw = gzip.decompress(raw)
                events = json.loads(raw)
                assert isinstance(events, list) and all("decision_id" in e for e in events)
            except (OSError, ValueError, AssertionError):
                self.send_response(400)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            out.write(b"".join(json.dumps(e).encode() + b"\n" for e in events))
            out.flush()
            os.fsync(out.fileno())
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
