"""The sliding-window counter behind per-tenant quotas."""

from llm_authz.quota import LocalQuota


def test_counts_requests_and_tokens_in_the_current_minute():
    q = LocalQuota()
    assert q.consume("a", 10, now=120.0).requests == 1
    usage = q.consume("a", 5, now=130.0)
    assert (usage.requests, usage.tokens, usage.reset_seconds) == (2, 15, 50)
    assert q.consume("b", 1, now=130.0).requests == 1


def test_previous_minute_weighs_by_its_overlap():
    q = LocalQuota()
    for _ in range(10):
        q.consume("a", 100, now=60.0)
    assert q.consume("a", 0, now=120.0).requests == 10 + 1  # all of the previous minute still overlaps
    assert q.consume("a", 0, now=150.0).requests == 5 + 2  # half of it does
    assert q.consume("a", 0, now=240.0).requests == 1  # two minutes on, nothing is left
