"""Per-tenant quotas through Envoy: 429 with retry-after, shared across replicas through a real Redis."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import FREE_KEY, REPO, start_stack

pytestmark = pytest.mark.integration


def tenants_with_limit(tmp, requests_per_minute: int):
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    path = tmp / "tenants" / "hobbyist.yaml"
    path.write_text(path.read_text().replace("requests_per_minute: 20", f"requests_per_minute: {requests_per_minute}"))


def test_local_quota_answers_429_with_retry_after(tmp_path):
    tenants_with_limit(tmp_path, 3)
    running, stop_all = start_stack(tmp_path)
    try:
        codes = [running.chat(FREE_KEY, model="llama-3-8b").status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = running.chat(FREE_KEY, model="llama-3-8b")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
    finally:
        stop_all()


def test_two_replicas_share_the_quota_through_redis(tmp_path, redis_url):
    tenants_with_limit(tmp_path / "a", 4)
    tenants_with_limit(tmp_path / "b", 4)
    args = ["--quota-backend", "redis", "--redis-url", redis_url]
    first, stop_first = start_stack(tmp_path / "a", args)
    second, stop_second = start_stack(tmp_path / "b", args)
    try:
        codes = [s.chat(FREE_KEY, model="llama-3-8b").status_code for s in (first, second, first, second)]
        assert codes == [200, 200, 200, 200]
        assert first.chat(FREE_KEY, model="llama-3-8b").status_code == 429
        assert second.chat(FREE_KEY, model="llama-3-8b").status_code == 429
    finally:
        stop_first()
        stop_second()


def test_redis_down_denies_with_500(tmp_path):
    tenants_with_limit(tmp_path, 100)
    running, stop_all = start_stack(tmp_path, ["--quota-backend", "redis", "--redis-url", "redis://127.0.0.1:1/0"])
    try:
        r = running.chat(FREE_KEY, model="llama-3-8b")
        assert r.status_code == 500 and r.json()["error"]["code"] == "policy_error"
    finally:
        stop_all()
