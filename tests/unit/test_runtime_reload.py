"""Reload: a valid change takes effect; an invalid policy or tenant file keeps the revision in force."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llm_authz import metrics
from llm_authz.config import Config
from llm_authz.runtime import Runtime
from tests.helpers import check_request

REPO = Path(__file__).resolve().parents[2]
ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"


@pytest.fixture
def runtime(tmp_path):
    shutil.copytree(REPO / "policies" / "rego", tmp_path / "policies")
    shutil.copytree(REPO / "tenants", tmp_path / "tenants")
    rt = Runtime(Config(policies=tmp_path / "policies", tenants=tmp_path / "tenants", audit_dir=tmp_path / "audit",
                        quota_backend="none"))
    yield rt
    rt.close()


def chat(rt: Runtime, model: str = "gpt-4o") -> int:
    response = rt.checker.check(check_request(headers={"authorization": f"Bearer {ACME_KEY}"},
                                              body={"model": model, "messages": []}))
    return response.denied_response.status.code if response.HasField("denied_response") else 200


def reloads(outcome: str) -> float:
    return metrics.POLICY_RELOADS.labels(outcome=outcome)._value.get()


def test_a_valid_tenant_change_takes_effect(runtime):
    assert chat(runtime, "new-model") == 403
    tenant = runtime.config.tenants / "acme.yaml"
    tenant.write_text(tenant.read_text().replace("models:\n", "models:\n  new-model: {operations: [chat]}\n", 1))
    before = reloads("ok")
    assert runtime.reload() is True
    assert reloads("ok") == before + 1
    assert chat(runtime, "new-model") == 200


@pytest.mark.parametrize("breakage", ["policy_syntax", "policy_unsafe", "tenant_yaml", "tenant_schema"])
def test_an_invalid_revision_is_refused_and_the_old_one_keeps_deciding(runtime, caplog, breakage):
    in_force = runtime.snapshot.revision.id
    policies, tenants = runtime.config.policies, runtime.config.tenants
    if breakage == "policy_syntax":
        (policies / "llm" / "broken.rego").write_text("package llm.authz\n\ndecision := {\n")
    elif breakage == "policy_unsafe":  # parses, does not compile: an unbound variable
        (policies / "llm" / "extra.rego").write_text(
            "package llm.authz\nimport rego.v1\nextra_reasons contains r if r == x\n")
    elif breakage == "tenant_yaml":
        (tenants / "acme.yaml").write_text("id: acme\nmodels: [unclosed\n")
    else:  # valid YAML, invalid tenant: every model of every tenant would be open
        (tenants / "acme.yaml").write_text("id: acme\ntier: premium\nmodels: {gpt-5: {operations: [chat]}}\n"
                                           "limits: {max_body_bytes: -1}\n")
    before = reloads("error")
    assert runtime.reload() is False
    assert reloads("error") == before + 1
    assert runtime.snapshot.revision.id == in_force
    assert "refused, keeping revision " + in_force[:12] in caplog.text
    assert chat(runtime, "gpt-4o") == 200
    assert chat(runtime, "gpt-5") == 403
