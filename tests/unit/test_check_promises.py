"""The safety promises of one check, each held by a test that fails when the promise is broken.

- A fault anywhere in the pipeline denies with 500 and is recorded (never allows, never raises).
- A record that cannot be written denies with 500, in dry-run too.
- Dry-run allows what the policy denies, tells the upstream, and records the real decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llm_authz.check as check_module
from llm_authz import metrics
from llm_authz.check import DRY_RUN_HEADER, Checker, CheckSettings
from llm_authz.config import Config
from llm_authz.errors import AuditWriteError
from llm_authz.runtime import load_snapshot
from tests.helpers import check_request

REPO = Path(__file__).resolve().parents[2]
ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"


class RecordingSink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class UnwritableSink:
    def __init__(self) -> None:
        self.attempts = 0

    def append(self, record: dict[str, Any]) -> None:
        self.attempts += 1
        raise AuditWriteError("[Errno 28] No space left on device")


@pytest.fixture(scope="module")
def snapshot():
    return load_snapshot(Config(policies=REPO / "policies" / "rego", tenants=REPO / "tenants"))


def allowed_chat():
    return check_request(headers={"authorization": f"Bearer {ACME_KEY}"},
                         body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def denied_chat():
    return check_request(headers={"authorization": f"Bearer {ACME_KEY}"},
                         body={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]})


def status_of(response) -> int:
    if response.HasField("denied_response"):
        return response.denied_response.status.code
    assert response.HasField("ok_response")
    return 200


def test_the_allowed_request_used_below_is_allowed(snapshot):
    sink = RecordingSink()
    assert status_of(Checker(snapshot, audit=sink).check(allowed_chat())) == 200
    assert sink.records[0]["allowed"] is True


class Boom(RuntimeError):
    """A fault injected into one step of the pipeline."""


def _raise(*args: Any, **kwargs: Any) -> Any:
    raise Boom("injected fault")


PIPELINE_STEPS = ["from_check_request", "match_route", "extract_payload", "build_input", "from_result",
                  "_fill_context"]


@pytest.mark.parametrize("step", PIPELINE_STEPS)
def test_a_fault_inside_the_pipeline_denies_with_500_and_is_recorded(snapshot, monkeypatch, step):
    monkeypatch.setattr(check_module, step, _raise)
    sink = RecordingSink()
    before = metrics.INTERNAL_ERRORS._value.get()
    response = Checker(snapshot, audit=sink).check(allowed_chat())
    assert status_of(response) == 500
    assert len(sink.records) == 1
    record = sink.records[0]
    assert record["allowed"] is False and record["status"] == 500 and record["reasons"] == ["policy_error"]
    assert record["result"] == {"error": "internal error: Boom"}
    assert metrics.INTERNAL_ERRORS._value.get() == before + 1


def test_a_fault_in_identity_resolution_denies_with_500(snapshot, monkeypatch):
    monkeypatch.setattr(snapshot.resolver, "resolve", _raise)
    sink = RecordingSink()
    assert status_of(Checker(snapshot, audit=sink).check(allowed_chat())) == 500
    assert sink.records[0]["allowed"] is False


def test_a_fault_in_the_engine_denies_with_500(snapshot, monkeypatch):
    monkeypatch.setattr(snapshot.revision.engine, "evaluate", _raise)
    sink = RecordingSink()
    assert status_of(Checker(snapshot, audit=sink).check(allowed_chat())) == 500
    assert sink.records[0]["status"] == 500


def test_an_unwritable_audit_log_denies_an_allowed_request_with_500(snapshot):
    sink = UnwritableSink()
    before = metrics.AUDIT_ERRORS.labels(kind="write")._value.get()
    response = Checker(snapshot, audit=sink).check(allowed_chat())
    assert sink.attempts == 1
    assert status_of(response) == 500
    assert b'"code":"policy_error"' in response.denied_response.body.encode()
    assert metrics.AUDIT_ERRORS.labels(kind="write")._value.get() == before + 1


def test_dry_run_allows_what_the_policy_denies_and_records_the_real_decision(snapshot):
    sink = RecordingSink()
    response = Checker(snapshot, audit=sink, settings=CheckSettings(dry_run=True)).check(denied_chat())
    assert status_of(response) == 200
    upstream = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert upstream[DRY_RUN_HEADER] == "deny:model_not_allowed"
    record = sink.records[0]
    assert record["dry_run"] is True
    assert record["allowed"] is False and record["status"] == 403 and record["reasons"] == ["model_not_allowed"]


def test_dry_run_leaves_an_allowed_request_alone(snapshot):
    sink = RecordingSink()
    response = Checker(snapshot, audit=sink, settings=CheckSettings(dry_run=True)).check(allowed_chat())
    assert status_of(response) == 200
    assert DRY_RUN_HEADER not in {h.header.key for h in response.ok_response.headers}


def test_dry_run_still_denies_when_the_audit_log_cannot_be_written(snapshot):
    """Dry-run relaxes the policy, not the log: an unrecorded request is never let through."""
    response = Checker(snapshot, audit=UnwritableSink(), settings=CheckSettings(dry_run=True)).check(allowed_chat())
    assert status_of(response) == 500
    response = Checker(snapshot, audit=UnwritableSink(), settings=CheckSettings(dry_run=True)).check(denied_chat())
    assert status_of(response) == 500


def test_a_failing_quota_refund_still_answers_the_deny(snapshot):
    """The refund of a denied request's cost runs after the decision: its failure changes nothing."""
    from llm_authz.quota import LocalQuota

    class BrokenRefund(LocalQuota):
        def refund(self, usage):
            raise RuntimeError("store client bug")

    sink = RecordingSink()
    response = Checker(snapshot, audit=sink, quota=BrokenRefund()).check(denied_chat())
    assert status_of(response) == 403
    assert len(sink.records) == 1 and sink.records[0]["reasons"] == ["model_not_allowed"]
