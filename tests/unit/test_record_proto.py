"""proto/llm_authz/audit/v1/record.proto is the typed schema of the audit records: it must hold.

The .proto is compiled with grpcio-tools (as a consumer would), then every record of every kind
that the service really writes is parsed into its message with unknown fields refused. A field
added to a record and not to the schema (or renamed in one of them) fails here.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

import llm_authz.check as check_module
from llm_authz.audit import chain, segments
from llm_authz.audit.writer import AuditLog, AuditOptions
from llm_authz.config import Config
from llm_authz.runtime import Runtime
from tests.helpers import check_request
from tests.unit.audit_logs import crash_writer

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto" / "llm_authz" / "audit" / "v1" / "record.proto"
ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"
MESSAGES = {"decision": "DecisionRecord", "checkpoint": "CheckpointRecord", "revision": "RevisionRecord",
            "segment": "SegmentRecord", "recovery": "RecoveryRecord"}


@pytest.fixture(scope="module")
def record_pb2(tmp_path_factory):
    """The schema compiled by grpcio-tools' protoc, imported from a scratch directory."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("proto_out")
    include = str(Path(protoc.__file__).parent / "_proto")
    status = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}", str(PROTO)])
    assert status == 0, "record.proto does not compile"
    # Loaded from its file under a name of its own: its package path would shadow the service's.
    spec = importlib.util.spec_from_file_location("audit_record_pb2", out / "llm_authz" / "audit" / "v1" / "record_pb2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_lines(directory: Path) -> list[bytes]:
    """Every line of every segment, plain or compressed, every chain."""
    return [line.rstrip(b"\n") for seg in segments.list_segments(directory) for line in segments.iter_lines(seg.path)]


@pytest.fixture(scope="module")
def service_log(tmp_path_factory):
    """A log the service wrote: allowed, denied and errored checks, rotation, signed checkpoints, a reload."""
    work = tmp_path_factory.mktemp("service")
    shutil.copytree(REPO / "policies" / "rego", work / "policies")
    shutil.copytree(REPO / "tenants", work / "tenants")
    key_file = work / "signing.pem"
    from cryptography.hazmat.primitives import serialization
    key_file.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_file.chmod(0o600)
    config = Config(policies=work / "policies", tenants=work / "tenants", audit_dir=work / "audit",
                    audit_signing_key=key_file, audit_segment_bytes=64 * 1024, audit_checkpoint_records=5,
                    quota_backend="none")
    runtime = Runtime(config)
    try:
        def chat(model: str, key: str | None = ACME_KEY) -> None:
            headers = {"authorization": f"Bearer {key}"} if key else {}
            runtime.checker.check(check_request(headers=headers, body={"model": model, "messages": []}))

        for _ in range(12):
            chat("gpt-4o")                          # allowed
            runtime.checker.check(check_request(    # allowed, with a W3C trace context
                headers={"authorization": f"Bearer {ACME_KEY}",
                         "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
                body={"model": "gpt-4o", "messages": []}))
            chat("gpt-5")                           # denied 403
            chat("gpt-4o", key=None)                # denied 401
            runtime.checker.check(check_request(headers={"authorization": f"Bearer {ACME_KEY}"}, body=b"{"))
        (work / "tenants" / "acme.yaml").write_text(
            (work / "tenants" / "acme.yaml").read_text().replace("tier: premium", "tier: enterprise"))
        assert runtime.reload()                     # a second revision record
        original = check_module.build_input
        check_module.build_input = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("fault"))
        try:
            chat("gpt-4o")                          # errored: 500, no input
        finally:
            check_module.build_input = original
    finally:
        runtime.close()
    return work / "audit"


@pytest.fixture(scope="module")
def worker_chain_log(tmp_path_factory):
    """A second writer's chain (as `serve --processes 2` writes it) whose revision came from a bundle."""
    from tests.unit.audit_logs import SOURCE, decision

    directory = tmp_path_factory.mktemp("chains")
    log = AuditLog(directory, AuditOptions(signing_key=Ed25519PrivateKey.generate()), chain_name="w1")
    log.archive_revision(SOURCE, bundle_revision="2026-12-02T06:00:00Z-abc123")
    log.append(decision(1))
    log.close()
    return directory


@pytest.fixture(scope="module")
def recovered_log(tmp_path_factory):
    """A log whose writer was killed mid-line: restart writes a recovery record naming the torn bytes."""
    directory = tmp_path_factory.mktemp("crash")
    crash_writer(directory, 7, checkpoint_records=100, segment_bytes=1 << 20)
    segment = sorted(p for p in directory.iterdir() if chain.is_segment_name(p.name))[-1]
    with segment.open("ab") as fh:
        fh.write(b'{"allowed":true,"kind":"deci')
    AuditLog(directory, AuditOptions(signing_key=Ed25519PrivateKey.generate())).close()
    return directory


def parse(record_pb2, line: bytes):
    record = orjson.loads(line)
    message = getattr(record_pb2, MESSAGES[record["kind"]])()
    json_format.Parse(line.decode(), message, ignore_unknown_fields=False)
    return record, message


def test_every_record_the_service_writes_parses_into_its_message(record_pb2, service_log, recovered_log,
                                                                 worker_chain_log):
    kinds: dict[str, int] = {}
    lines = all_lines(service_log) + all_lines(recovered_log) + all_lines(worker_chain_log)
    assert any(b'"chain":"w1"' in line for line in lines) and any(b'"bundle_revision"' in line for line in lines)
    assert any(b'"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"' in line for line in lines)
    for line in lines:
        kind = orjson.loads(line)["kind"]
        assert kind in MESSAGES, f"record kind {kind!r} has no message in record.proto"
        try:
            parse(record_pb2, line)
        except json_format.ParseError as exc:
            pytest.fail(f"a {kind} record does not fit record.proto (add the field to the schema): {exc}")
        kinds[kind] = kinds.get(kind, 0) + 1
    assert set(kinds) == set(MESSAGES), f"not every kind was exercised: {kinds}"


def test_the_parsed_message_holds_what_the_record_says(record_pb2, service_log):
    lines = all_lines(service_log)
    statuses = set()
    for line in lines:
        record, message = parse(record_pb2, line)
        assert message.seq == record["seq"] and message.hash == record["hash"]
        assert message.prev_hash == record["prev_hash"]
        if record["kind"] == "decision":
            statuses.add(message.status)
            assert message.allowed == record["allowed"] and list(message.reasons) == record["reasons"]
            assert message.policy.revision == record["policy"]["revision"]
            assert json_format.MessageToDict(message.input) == (record["input"] or {})
            assert message.input_form == (record.get("input_form") or "")
        if record["kind"] == "checkpoint" and record.get("signature"):
            assert message.signature == record["signature"] and message.key_id == record["key_id"]
    assert {200, 400, 401, 403, 500} <= statuses


def test_a_field_the_schema_does_not_know_is_refused(record_pb2, service_log):
    """The check above can fail: an unknown member makes the parse fail."""
    line = next(line for line in all_lines(service_log) if b'"kind":"decision"' in line)
    record = orjson.loads(line)
    record["surprise"] = 1
    with pytest.raises(json_format.ParseError):
        json_format.Parse(orjson.dumps(record).decode(), record_pb2.DecisionRecord(), ignore_unknown_fields=False)
