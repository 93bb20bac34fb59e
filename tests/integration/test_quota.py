"""Quotas through Envoy: token buckets per tenant, credential and model, x-ratelimit-* headers,
429 with retry-after, a denied request spending nothing, shared across replicas through a real Redis."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from llm_authz.demo import processes
from tests.conftest import ACME_KEY, ACME_READONLY_KEY, FREE_KEY, REPO, start_stack

pytestmark = pytest.mark.integration

SECOND_KEY = "sk-llm-acme-second-test-key-51d0"


def tenants_with_limit(tmp, requests_per_minute: int):
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    path = tmp / "tenants" / "hobbyist.yaml"
    path.write_text(path.read_text().replace("requests_per_minute: 20", f"requests_per_minute: {requests_per_minute}"))


def tiered_tenants(tmp) -> None:
    """acme with a wide tenant bucket, a narrow bucket on its first key and one on gpt-4o-mini."""
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    path = tmp / "tenants" / "acme.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["limits"].update({"requests_per_minute": 600, "tokens_per_minute": 1_000_000})
    keys = doc["credentials"]["api_keys"]
    keys[0]["limits"] = {"requests_per_minute": 6, "burst": 3}
    keys.append({"id": "ak_acme_2", "sha256": hashlib.sha256(SECOND_KEY.encode()).hexdigest(),
                 "scopes": ["inference:invoke"]})
    doc["models"]["gpt-4o-mini"]["limits"] = {"requests_per_minute": 6, "burst": 2}
    path.write_text(yaml.safe_dump(doc))


def test_local_quota_answers_429_with_retry_after(tmp_path):
    tenants_with_limit(tmp_path, 3)
    running, stop_all = start_stack(tmp_path)
    try:
        answers = [running.chat(FREE_KEY, model="llama-3-8b") for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0"]
        assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in answers)
        r = running.chat(FREE_KEY, model="llama-3-8b")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 20  # one request refills in 20 s at 3/min
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-limit-tokens"] == "10000"
    finally:
        stop_all()


@pytest.fixture(scope="module")
def tiered(tmp_path_factory, redis_url) -> Iterator:
    """acme's tiers with their buckets in a real Redis (each module run has its own key prefix)."""
    tmp = tmp_path_factory.mktemp("tiered")
    tiered_tenants(tmp)
    running, stop_all = start_stack(tmp, ["--quota-backend", "redis", "--redis-url", redis_url,
                                          "--redis-prefix", f"test-{processes.free_port()}"])
    yield running
    stop_all()


def test_a_denied_request_spends_no_quota(tiered):
    # A key without the inference scope asks for a huge answer, again and again: denied, nothing counted.
    r = tiered.chat(ACME_READONLY_KEY, model="gpt-4o", max_tokens=10**15)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    for _ in range(3):
        assert tiered.chat(ACME_READONLY_KEY, model="gpt-4o", max_tokens=900_000).status_code == 403
    ok = tiered.chat(SECOND_KEY, model="gpt-4o", max_tokens=100)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-remaining-requests"] == "599"  # only this request counted
    assert 1_000_000 - 120 <= int(ok.headers["x-ratelimit-remaining-tokens"]) < 1_000_000 - 100


def test_credential_and_model_buckets_limit_independently(tiered):
    first = [tiered.chat(ACME_KEY, model="gpt-4o") for _ in range(4)]
    assert [r.status_code for r in first] == [200, 200, 200, 429]
    # the key's bucket (burst 3) is the tightest: the headers count it down
    assert [r.headers["x-ratelimit-remaining-requests"] for r in first] == ["2", "1", "0", "0"]
    assert first[0].headers["x-ratelimit-limit-requests"] == "6"
    assert first[3].json()["error"]["code"] == "rate_limited" and "retry-after" in first[3].headers
    # another key of the same tenant still has its room; the model's bucket (burst 2) is its own
    assert tiered.chat(SECOND_KEY, model="gpt-4o").status_code == 200
    mini = [tiered.chat(SECOND_KEY, model="gpt-4o-mini") for _ in range(3)]
    assert [r.status_code for r in mini] == [200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in mini] == ["1", "0", "0"]
    # ...and the tenant's own bucket (600) is what the second key's other models report
    r = tiered.chat(SECOND_KEY, model="gpt-4o")
    assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "600"


def test_two_replicas_share_the_quota_through_redis(tmp_path, redis_url):
    tenants_with_limit(tmp_path / "a", 4)
    tenants_with_limit(tmp_path / "b", 4)
    args = ["--quota-backend", "redis", "--redis-url", redis_url, "--redis-prefix", f"test-{processes.free_port()}"]
    first, stop_first = start_stack(tmp_path / "a", args)
    second, stop_second = start_stack(tmp_path / "b", args)
    try:
        answers = [s.chat(FREE_KEY, model="llama-3-8b") for s in (first, second, first, second)]
        assert [r.status_code for r in answers] == [200, 200, 200, 200]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["3", "2", "1", "0"]
        assert first.chat(FREE_KEY, model="llama-3-8b").status_code == 429
        assert second.chat(FREE_KEY, model="llama-3-8b").status_code == 429
    finally:
        stop_first()
        stop_second()


def test_redis_stopped_denies_with_500(tmp_path):
    """A real Redis that answers, then is stopped: the next check denies (a quota is never skipped)."""
    tenants_with_limit(tmp_path, 100)
    port = processes.free_port()
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                              "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running, stop_all = None, None
    try:
        processes.wait_for_port(port, proc=redis)
        running, stop_all = start_stack(tmp_path, ["--quota-backend", "redis",
                                                   "--redis-url", f"redis://127.0.0.1:{port}/0"])
        assert running.chat(FREE_KEY, model="llama-3-8b").status_code == 200
        redis.terminate()
        redis.wait(10)
        r = running.chat(FREE_KEY, model="llama-3-8b")
        assert r.status_code == 500 and r.json()["error"]["code"] == "policy_error"
        assert "x-ratelimit-remaining-requests" not in r.headers
    finally:
        if stop_all is not None:
            stop_all()
        if redis.poll() is None:
            redis.terminate()
            redis.wait(10)
