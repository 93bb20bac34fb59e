"""`make run`: the demo model server, llm-authz and Envoy on loopback, with curl lines that work."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from llm_authz.demo import processes
from llm_authz.demo.upstream import make_server

INGRESS, AUTHZ, UPSTREAM, ADMIN = 10000, 9191, 8000, 9901
ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"
READONLY_KEY = "sk-llm-acme-readonly-2c7e91d04b3a5f66"
FREE_KEY = "sk-llm-hobbyist-demo-93a1d7c2e05b4f18"


def curl_lines(port: int = INGRESS) -> str:
    url = f"http://127.0.0.1:{port}"
    chat = "curl -s -i {url}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'content-type: application/json' -d '{body}'"
    ok_body = '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":64}'
    big = ("python3 -c 'import json; print(json.dumps({\"model\": \"llama-3-8b\", \"messages\": "
           "[{\"role\": \"user\", \"content\": \"a\" * 6000}]}))' | "
           f"curl -s -i {url}/v1/chat/completions -H 'Authorization: Bearer {FREE_KEY}' "
           "-H 'content-type: application/json' --data-binary @-")
    lines = [
        "# allowed: acme may chat with gpt-4o",
        chat.format(url=url, key=ACME_KEY, body=ok_body),
        "# denied 403 model_not_allowed: acme has no grant for gpt-5",
        chat.format(url=url, key=ACME_KEY, body=ok_body.replace("gpt-4o", "gpt-5")),
        "# denied 403 insufficient_scope: a read-only key cannot invoke models",
        chat.format(url=url, key=READONLY_KEY, body=ok_body),
        "# allowed: the free tier may chat with llama-3-8b",
        chat.format(url=url, key=FREE_KEY, body=ok_body.replace("gpt-4o", "llama-3-8b")),
        "# denied 413 payload_too_large: the free tier takes bodies up to 4 KiB",
        big,
        "# allowed: the read-only key may list acme's models (what SDKs call at start-up)",
        f"curl -s -i {url}/v1/models -H 'Authorization: Bearer {READONLY_KEY}'",
        "# denied 401 missing_credential",
        f"curl -s -i {url}/v1/chat/completions -H 'content-type: application/json' -d '{ok_body}'",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run llm-authz, Envoy and a demo model server on loopback.")
    parser.add_argument("--ingress-port", type=int, default=INGRESS)
    parser.add_argument("--authz-port", type=int, default=AUTHZ)
    parser.add_argument("--upstream-port", type=int, default=UPSTREAM)
    parser.add_argument("--admin-port", type=int, default=ADMIN)
    parser.add_argument("--metrics-port", type=int, default=9464)
    parser.add_argument("--audit-dir", type=Path, default=processes.REPO / "audit")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="llm-authz-run-"))
    upstream = make_server("127.0.0.1", args.upstream_port)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    authz = processes.start_llm_authz(
        ["--listen", f"127.0.0.1:{args.authz_port}", "--metrics-listen", f"127.0.0.1:{args.metrics_port}",
         "--audit-dir", str(args.audit_dir)], workdir)
    envoy = None
    try:
        processes.wait_for_port(args.authz_port, proc=authz)
        envoy = processes.start_envoy(processes.render_envoy_config(
            args.ingress_port, args.authz_port, args.upstream_port, args.admin_port), workdir)
        processes.wait_envoy_ready(args.admin_port)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"could not start the stack: {exc}; logs in {workdir}", file=sys.stderr)
        processes.stop(envoy)
        processes.stop(authz)
        return 1
    print(f"llm-authz on 127.0.0.1:{args.authz_port} (metrics http://127.0.0.1:{args.metrics_port}/metrics), "
          f"Envoy on 127.0.0.1:{args.ingress_port}, demo model server on 127.0.0.1:{args.upstream_port}")
    print(f"audit log: {args.audit_dir}; logs: {workdir}")
    print(f"llm-authz pid {authz.pid}: edits to policies/rego/ and tenants/ are loaded within seconds "
          f"(an invalid edit is refused, the old revision stays; see the log); `kill -HUP {authz.pid}` reloads too\n")
    print(curl_lines(args.ingress_port), flush=True)
    print("\nCtrl-C stops everything.", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        if authz.poll() is not None or envoy.poll() is not None:
            print(f"a process exited; logs in {workdir}", file=sys.stderr)
            break
        stop.wait(0.5)
    processes.stop(envoy)
    processes.stop(authz)
    upstream.shutdown()
    print("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
