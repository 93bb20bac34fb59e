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


# ---- through the Checker: which buckets a request draws from -----------------------------------

ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """Acme with one request a minute on gpt-4o-mini and fraud-scorer, two on its main API key, and one
    on an API key whose id equals the kid of a JWT signing key."""
    import hashlib
    import shutil

    from llm_authz.config import Config
    from llm_authz.runtime import load_snapshot
    from tests.conftest import REPO
    from tests.identity_fixtures import ISSUER, new_key, write_jwks

    tmp = tmp_path_factory.mktemp("quota-check")
    shutil.copytree(REPO / "tenants", tmp / "tenants")
    key = new_key("RS256", kid="rsa-1")
    write_jwks(tmp / "tenants" / "keys" / "test.jwks.json", key)
    acme = (tmp / "tenants" / "acme.yaml").read_text()
    for old, new in [
        ("gpt-4o-mini:   {operations: [chat, completions], max_tokens: 2048}",
         "gpt-4o-mini:   {operations: [chat, completions], max_tokens: 2048, limits: {requests_per_minute: 1}}"),
        ("fraud-scorer:  {operations: [infer]}", "fraud-scorer:  {operations: [infer], limits: {requests_per_minute: 1}}"),
        ('scopes: [inference:invoke, models:read], expires: "2030-01-01T00:00:00Z"}',
         'scopes: [inference:invoke, models:read], expires: "2030-01-01T00:00:00Z", limits: {requests_per_minute: 2}}\n'
         f'    - {{id: rsa-1, sha256: "{hashlib.sha256(b"unused").hexdigest()}", scopes: [inference:invoke], '
         'limits: {requests_per_minute: 1}}'),
        ("jwks_file: keys/acme.jwks.json", "jwks_file: keys/test.jwks.json"),
        ("https://idp.acme.example", ISSUER),
    ]:
        assert old in acme, old
        acme = acme.replace(old, new)
    (tmp / "tenants" / "acme.yaml").write_text(acme)
    snapshot = load_snapshot(Config(tenants=tmp / "tenants", policies=REPO / "policies" / "rego"))
    yield snapshot, key
    snapshot.revision.close()


def statuses(snapshot, requests) -> list[int]:
    from llm_authz.check import Checker
    from llm_authz.quota import LocalQuota

    checker = Checker(snapshot, audit=None, quota=LocalQuota())
    out = []
    for request in requests:
        response = checker.check(request)
        out.append(response.denied_response.status.code if response.HasField("denied_response") else 200)
    return out


def chat(model: str, credential: str):
    from tests.helpers import check_request

    return check_request(headers={"authorization": f"Bearer {credential}"},
                         body={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_an_api_key_draws_from_its_own_bucket(limited):
    snapshot, _ = limited
    assert statuses(snapshot, [chat("gpt-4o", ACME_KEY)] * 3) == [200, 200, 429]


def test_a_model_draws_from_its_own_bucket_named_in_the_body_or_the_path(limited):
    from tests.helpers import check_request

    snapshot, _ = limited
    assert statuses(snapshot, [chat("gpt-4o-mini", ACME_KEY), chat("gpt-4o-mini", ACME_KEY)]) == [200, 429]
    infer = check_request(path="/v2/models/fraud-scorer/infer", headers={"authorization": f"Bearer {ACME_KEY}"},
                          body={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]})
    assert statuses(snapshot, [infer, infer]) == [200, 429]


def test_a_token_never_draws_from_an_api_key_bucket_even_one_named_like_its_key_id(limited):
    from tests.identity_fixtures import claims

    snapshot, key = limited
    token = key.sign(claims())
    assert statuses(snapshot, [chat("gpt-4o", token)] * 3) == [200, 200, 200]


def test_a_denied_request_gives_back_what_it_reserved(limited):
    snapshot, _ = limited
    denied = [chat("gpt-5", ACME_KEY)] * 3  # a model acme may not use: 403 after reserving
    assert statuses(snapshot, [*denied, chat("gpt-4o", ACME_KEY), chat("gpt-4o", ACME_KEY)]) == [403, 403, 403, 200, 200]


def _headers(response) -> dict[str, str]:
    answer = response.denied_response if response.HasField("denied_response") else response.ok_response
    return {h.header.key: h.header.value for h in answer.headers}


def test_a_429_says_when_the_bucket_has_room_again(limited):
    from llm_authz.check import Checker
    from llm_authz.quota import LocalQuota

    snapshot, _ = limited
    checker = Checker(snapshot, audit=None, quota=LocalQuota())
    for _ in range(2):
        assert checker.check(chat("gpt-4o", ACME_KEY)).HasField("ok_response")
    refused = checker.check(chat("gpt-4o", ACME_KEY))
    assert refused.denied_response.status.code == 429
    # Two requests a minute on this key: one more fits 30 s after the first (not the 60 s fallback).
    assert _headers(refused)["retry-after"] == "30"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5"])
def test_a_check_whose_answer_cannot_be_built_gives_its_quota_back(limited, monkeypatch, model):
    """An allowed request (gpt-4o-mini, one a minute) or a denied one (gpt-5) whose CheckResponse
    fails to build is answered 500 and spends nothing: the next request still fits."""
    from llm_authz.check import Checker
    from llm_authz.quota import LocalQuota
    from tests.helpers import first_answer_fails

    snapshot, _ = limited
    checker = Checker(snapshot, audit=None, quota=LocalQuota())
    first_answer_fails(monkeypatch)
    assert checker.check(chat(model, ACME_KEY)).denied_response.status.code == 500
    assert checker.check(chat("gpt-4o-mini", ACME_KEY)).HasField("ok_response")
