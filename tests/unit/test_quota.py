"""Token buckets behind the quotas: refill, burst, all-or-nothing reservation, refunds, headers."""

from __future__ import annotations

import pytest

from llm_authz.quota import MAX_TOKEN_COST, BucketSpec, LocalQuota, duration, plan
from llm_authz.tenants import Tenant


def spec(unit: str = "requests", per_minute: int = 60, burst: int = 3, key: str = "k") -> BucketSpec:
    return BucketSpec("tenant", "acme", unit, per_minute, burst, key)


def test_a_bucket_holds_its_burst_then_refills_at_its_rate() -> None:
    q = LocalQuota()
    s = [spec(per_minute=60, burst=3)]
    got = [q.reserve(s, {"requests": 1}, now=100.0) for _ in range(4)]
    assert [u.buckets[0].available for u in got] == [3, 2, 1, 0]
    assert [u.reserved for u in got] == [True, True, True, False]
    assert q.reserve(s, {"requests": 1}, now=100.5).buckets[0].exceeded  # half a request refilled
    assert q.reserve(s, {"requests": 1}, now=101.0).reserved  # one per second at 60/min
    assert q.reserve(s, {"requests": 1}, now=1000.0).buckets[0].available == 3  # never above the burst


def test_nothing_is_taken_unless_every_bucket_has_room() -> None:
    q = LocalQuota()
    tenant, model = spec(burst=10, key="t"), spec(burst=1, key="m")
    assert q.reserve([tenant, model], {"requests": 1}, now=0.0).reserved
    refused = q.reserve([tenant, model], {"requests": 1}, now=0.0)
    assert not refused.reserved and refused.exceeded
    assert q.reserve([tenant], {"requests": 1}, now=0.0).buckets[0].available == 9  # the refused one took nothing


def test_a_refund_gives_the_reservation_back() -> None:
    q = LocalQuota()
    s = [spec(unit="tokens", per_minute=600, burst=1000)]
    usage = q.reserve(s, {"tokens": 700}, now=0.0)
    q.refund(usage)
    assert q.reserve(s, {"tokens": 0}, now=0.0).buckets[0].available == 1000


def test_one_huge_request_cannot_drain_a_bucket() -> None:
    q = LocalQuota()
    s = [spec(unit="tokens", per_minute=600, burst=1000)]
    assert not q.reserve(s, {"tokens": 10**30}, now=0.0).reserved
    assert q.reserve(s, {"tokens": 10}, now=0.0).buckets[0].available == 1000


def test_headers_report_the_bucket_with_the_least_remaining() -> None:
    q = LocalQuota()
    wide = BucketSpec("tenant", "acme", "requests", 600, 600, "t")
    narrow = BucketSpec("credential", "k1", "requests", 6, 2, "c")
    tokens = BucketSpec("tenant", "acme", "tokens", 6000, 6000, "tt")
    usage = q.reserve([wide, narrow, tokens], {"requests": 1, "tokens": 100}, now=0.0)
    h = usage.headers()
    assert h["x-ratelimit-limit-requests"] == "6" and h["x-ratelimit-remaining-requests"] == "1"
    assert h["x-ratelimit-reset-requests"] == "10s"  # one request at 6/min
    assert h["x-ratelimit-limit-tokens"] == "6000" and h["x-ratelimit-remaining-tokens"] == "5900"
    assert h["x-ratelimit-reset-tokens"] == "1s"


@pytest.mark.parametrize("seconds,text", [(0.02, "20ms"), (0.0, "0ms"), (1.0, "1s"), (59.2, "1m0s"),
                                          (360.0, "6m0s"), (3723.0, "1h2m3s")])
def test_reset_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_plan_names_the_buckets_of_each_tier_that_sets_a_rate() -> None:
    tenant = Tenant.model_validate({
        "id": "acme", "tier": "premium",
        "limits": {"requests_per_minute": 600, "tokens_per_minute": 100000, "burst": 50},
        "models": {"gpt-4o": {"operations": ["chat"], "limits": {"tokens_per_minute": 2000}},
                   "small": {"operations": ["chat"]}},
        "credentials": {"api_keys": [
            {"id": "k1", "sha256": "0" * 64, "limits": {"requests_per_minute": 10, "burst": 2}},
            {"id": "k2", "sha256": "1" * 64}]},
    })
    specs, costs = plan(tenant, "k1", "gpt-4o", 123)
    assert [(s.tier, s.name, s.unit, s.per_minute, s.burst) for s in specs] == [
        ("tenant", "acme", "requests", 600, 50), ("tenant", "acme", "tokens", 100000, 100000),
        ("credential", "k1", "requests", 10, 2), ("model", "gpt-4o", "tokens", 2000, 2000)]
    assert costs == {"requests": 1, "tokens": 123}
    specs, costs = plan(tenant, "k2", "small", 10**40)
    assert [s.tier for s in specs] == ["tenant", "tenant"] and costs["tokens"] == MAX_TOKEN_COST
    assert len({s.key for s in plan(tenant, "k1", "gpt-4o", 1)[0]}) == 4  # each bucket has its own key


def test_plans_follow_a_reloaded_tenant_and_do_not_grow_with_unknown_model_names() -> None:
    from llm_authz import quota

    def tenant(per_minute: int) -> Tenant:
        return Tenant.model_validate({"id": "acme", "tier": "t", "limits": {"requests_per_minute": per_minute},
                                      "models": {"gpt-4o": {"operations": ["chat"]}}})

    before = tenant(10)
    assert [s.per_minute for s in plan(before, None, "gpt-4o", 1)[0]] == [10]
    assert [s.per_minute for s in plan(before, None, "gpt-4o", 1)[0]] == [10]  # remembered
    after = tenant(20)  # what a reload of the tenant file makes
    assert [s.per_minute for s in plan(after, None, "gpt-4o", 1)[0]] == [20]
    remembered = len(quota._PLANS)
    for i in range(50):
        assert [s.per_minute for s in plan(after, None, f"model-{i}", 1)[0]] == [20]
    assert len(quota._PLANS) == remembered


def test_burst_without_a_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="burst needs requests_per_minute"):
        Tenant.model_validate({"id": "a", "tier": "t", "limits": {"burst": 3}})
