"""`serve --bundle URL`: a signed OPA bundle served over HTTP decides checks through a real Envoy,
a newer one replaces it without a signal, and a tampered or wrongly signed one is refused while
the revision in force keeps deciding. The audit log names the bundle revision."""

from __future__ import annotations

import io
import shutil
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from llm_authz.audit import reader
from llm_authz.bundle.build import archive, build
from tests.conftest import ACME_KEY, REPO, start_stack

pytestmark = pytest.mark.integration


class BundleServer:
    """A bundle server: GET / answers the current bundle with its ETag, 304 on If-None-Match."""

    def __init__(self) -> None:
        self.body = b""
        self.etag = ""
        self.conditional_gets = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("if-none-match"):
                    outer.conditional_gets += 1
                if self.headers.get("if-none-match") == outer.etag:
                    self.send_response(304)
                    self.send_header("etag", outer.etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/gzip")
                self.send_header("etag", outer.etag)
                self.send_header("content-length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/bundles/llm.tar.gz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, body: bytes, etag: str) -> None:
        self.body, self.etag = body, f'"{etag}"'

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _key(path: Path) -> tuple[Path, Path]:
    private = rsa.generate_private_key(65537, 2048)
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pub = path.with_suffix(".pub")
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub


def _metric(stack, name: str) -> str:
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def _wait_for(predicate, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_bundle_over_http_is_loaded_replaced_and_bad_ones_refused(tmp_path):
    signing_key, public_key = _key(tmp_path / "signing.pem")
    other_key, _ = _key(tmp_path / "other.pem")
    tenants_v2 = tmp_path / "tenants-v2"
    shutil.copytree(REPO / "tenants", tenants_v2)
    acme = tenants_v2 / "acme.yaml"
    acme.write_text(acme.read_text().replace("  gpt-4o:        {operations: [chat, responses]}\n", ""))

    v1, v2 = tmp_path / "v1.tar.gz", tmp_path / "v2.tar.gz"
    build([REPO / "policies" / "rego"], v1, revision="2026-12-01.1", signing_key=signing_key,
          tenants_dir=REPO / "tenants")
    build([REPO / "policies" / "rego"], v2, revision="2026-12-01.2", signing_key=signing_key, tenants_dir=tenants_v2)
    server = BundleServer()
    server.publish(v1.read_bytes(), "v1")
    empty_tenants = tmp_path / "no-tenants"
    empty_tenants.mkdir()
    stack, stop_all = start_stack(tmp_path / "stack", [
        "--bundle", server.url, "--bundle-public-key", str(public_key), "--bundle-poll-seconds", "0.3"],
        tenants=empty_tenants)
    try:
        # v1: tenants come from the bundle (the tenant directory is empty).
        assert stack.chat(ACME_KEY).status_code == 200
        assert 'revision="2026-12-01.1"' in _metric(stack, "llm_authz_bundle_revision_info")

        # v2 published: in force within a few polls, without a signal.
        server.publish(v2.read_bytes(), "v2")
        assert _wait_for(lambda: stack.chat(ACME_KEY).status_code == 403), stack.authz_log()[-2000:]
        assert stack.chat(ACME_KEY).json()["error"]["code"] == "model_not_allowed"
        assert stack.chat(ACME_KEY, model="gpt-4o-mini").status_code == 200
        assert server.conditional_gets > 0  # polls carry If-None-Match
        errors_before = _reload_errors(stack)

        # A tampered v3 (v1's tenants under v2's signature) and a v3 signed by another key: refused.
        files = _files(v2.read_bytes())
        files["data.json"] = _files(v1.read_bytes())["data.json"]
        server.publish(archive(files), "tampered")
        assert _wait_for(lambda: _reload_errors(stack) > errors_before)
        assert stack.chat(ACME_KEY).status_code == 403  # v2 still decides
        v3 = tmp_path / "v3.tar.gz"
        build([REPO / "policies" / "rego"], v3, revision="2026-12-01.3", signing_key=other_key,
              tenants_dir=REPO / "tenants")
        server.publish(v3.read_bytes(), "v3")
        # (the tampered bundle may be refused again on a poll in between: wait for v3's own refusal)
        assert _wait_for(lambda: "does not verify" in stack.authz_log())
        assert stack.chat(ACME_KEY).status_code == 403
        assert 'revision="2026-12-01.2"' in _metric(stack, "llm_authz_bundle_revision_info")
        assert "2026-12-01.3" not in _metric(stack, "llm_authz_bundle_revision_info")
        assert "digest mismatch" in stack.authz_log()
    finally:
        stop_all()
        server.close()

    revisions = [r.get("bundle_revision") for r in reader.iter_records([stack.audit_dir], kinds=["revision"])]
    assert revisions == ["2026-12-01.1", "2026-12-01.2"]
    # Every decision names the policy revision the bundle's revision record put in force (or, for a
    # check already evaluating when the swap happened, the one before it).
    records = list(reader.iter_records([stack.audit_dir], kinds=None))
    in_force, previous = None, None
    for record in records:
        if record["kind"] == "revision":
            in_force, previous = record["revision"], in_force
        elif record["kind"] == "decision":
            assert record["policy"]["revision"] in (in_force, previous)
    assert {r["policy"]["revision"] for r in records if r["kind"] == "decision"} == {
        r["revision"] for r in records if r["kind"] == "revision"}


def _reload_errors(stack) -> float:
    line = _metric(stack, 'llm_authz_policy_reloads_total{outcome="error"}')
    return float(line.split()[-1]) if line else 0.0


def _files(raw: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        return {m.name.lstrip("/"): tar.extractfile(m).read() for m in tar if m.isfile()}
