"""Per-tenant request and token quotas: a sliding one-minute window, in-process or shared in Redis.

Every authenticated request of a known tenant counts (requests + estimated tokens) before the
policy runs; the counts go into `input.quota` and the policy decides `rate_limited`. Because the
counts are in the input, a replay of the audit log sees exactly what the live decision saw.
The window is the usual two-bucket approximation: the previous minute weighted by how much of it
still overlaps the last 60 seconds, plus the current minute.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Protocol

from llm_authz.errors import ConfigError, QuotaUnavailable

WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """Usage over the last minute, this request included."""

    requests: int
    tokens: int
    reset_seconds: int  # until the current minute bucket ends

    def as_input(self) -> dict[str, int]:
        return {"window_seconds": WINDOW_SECONDS, "requests": self.requests, "tokens": self.tokens,
                "reset_seconds": self.reset_seconds}


class QuotaCounter(Protocol):
    def consume(self, tenant: str, tokens: int, now: float) -> QuotaUsage:
        """Count one request and its tokens; raise QuotaUnavailable if the counter cannot be reached."""


def _blend(prev: tuple[int, int], cur: tuple[int, int], now: float) -> QuotaUsage:
    elapsed = now % WINDOW_SECONDS
    weight = 1.0 - elapsed / WINDOW_SECONDS
    return QuotaUsage(requests=math.ceil(prev[0] * weight) + cur[0], tokens=math.ceil(prev[1] * weight) + cur[1],
                      reset_seconds=max(1, math.ceil(WINDOW_SECONDS - elapsed)))


class LocalQuota:
    """Counts in this process only: right for one replica; use Redis when several share a tenant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, int], list[int]] = {}

    def consume(self, tenant: str, tokens: int, now: float) -> QuotaUsage:
        window = int(now // WINDOW_SECONDS)
        with self._lock:
            cur = self._buckets.setdefault((tenant, window), [0, 0])
            cur[0] += 1
            cur[1] += tokens
            prev = self._buckets.get((tenant, window - 1), [0, 0])
            if len(self._buckets) > 4096:  # drop buckets older than the previous minute
                self._buckets = {k: v for k, v in self._buckets.items() if k[1] >= window - 1}
            return _blend((prev[0], prev[1]), (cur[0], cur[1]), now)


class RedisQuota:
    """Counts shared by every replica through Redis; one round trip per check."""

    def __init__(self, url: str, timeout_seconds: float = 0.05, prefix: str = "llm-authz:quota"):
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_seconds,
                                           socket_connect_timeout=timeout_seconds)
        self._prefix = prefix
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)

    def consume(self, tenant: str, tokens: int, now: float) -> QuotaUsage:
        window = int(now // WINDOW_SECONDS)
        cur_key = f"{self._prefix}:{tenant}:{window}"
        prev_key = f"{self._prefix}:{tenant}:{window - 1}"
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hincrby(cur_key, "r", 1)
            pipe.hincrby(cur_key, "t", tokens)
            pipe.expire(cur_key, 2 * WINDOW_SECONDS + 5)
            pipe.hmget(prev_key, "r", "t")
            requests, token_count, _, prev = pipe.execute()
        except self._errors as exc:
            raise QuotaUnavailable(f"quota store unavailable: {type(exc).__name__}") from exc
        prev_counts = (int(prev[0] or 0), int(prev[1] or 0))
        return _blend(prev_counts, (int(requests), int(token_count)), now)


def make_counter(backend: str, redis_url: str | None) -> QuotaCounter | None:
    if backend == "none":
        return None
    if backend == "redis":
        if not redis_url:
            raise ConfigError("quota_backend redis needs redis_url")
        return RedisQuota(redis_url)
    return LocalQuota()
