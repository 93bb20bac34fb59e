"""Request and token quotas as token buckets per tenant, per credential and per model.

Each tier that sets a limit in the tenant file (`limits:`, `credentials.api_keys[].limits`,
`models.<name>.limits`) has a requests bucket and/or a tokens bucket. A bucket holds at most its
burst and refills continuously at its per-minute rate. One check asks the store, in one round
trip, for every bucket of the request at once: if each has room for the request's cost, the cost
is taken from all of them (a reservation); if any lacks room, nothing is taken.

A denied request spends nothing: when the policy denies a request whose cost was reserved (for
any reason), the reservation is given back. What the policy saw — each bucket's level before
this request and the cost — is in `input.quota`, so a replay of the audit log decides exactly
as the live check did.

The token cost is the request's estimate (prompt characters / 4 + max_tokens), bounded by
MAX_TOKEN_COST: a huge `max_tokens` never fits a bucket, so it is refused whole instead of
draining the tenant, and the numbers stay exact in Redis (Lua numbers are doubles).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llm_authz.errors import ConfigError, QuotaUnavailable

MAX_TOKEN_COST = 1 << 40
_TIER_ORDER = {"tenant": 0, "credential": 1, "model": 2}
_RATELIMIT_HEADERS = tuple(
    (unit, (f"x-ratelimit-limit-{unit}", f"x-ratelimit-remaining-{unit}", f"x-ratelimit-reset-{unit}"))
    for unit in ("requests", "tokens"))


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One bucket a request draws from: who it belongs to, what it counts, how big it is."""

    tier: str  # tenant | credential | model
    name: str  # the tenant id, the API key id or the model name
    unit: str  # requests | tokens
    per_minute: int
    burst: int  # the most the bucket holds
    key: str  # where the store keeps it

    @property
    def rate(self) -> float:
        """Refill per second."""
        return self.per_minute / 60.0


@dataclass(frozen=True, slots=True)
class Bucket:
    """A bucket as this check found it."""

    spec: BucketSpec
    available: float  # before this request
    cost: int

    @property
    def exceeded(self) -> bool:
        return self.available < self.cost

    @property
    def remaining(self) -> int:
        """What is left once this request is counted (nothing is counted when a bucket lacks room)."""
        return max(0, math.floor(self.available - (0 if self.exceeded else self.cost)))

    def reset_seconds(self) -> float:
        """Until the bucket is full again."""
        if self.spec.rate <= 0:
            return 0.0
        left = self.available if self.exceeded else self.available - self.cost
        return max(0.0, (self.spec.burst - left) / self.spec.rate)

    def retry_seconds(self) -> int:
        """Until the bucket has room for this request's cost (0 when it has)."""
        if not self.exceeded:
            return 0
        if self.spec.rate <= 0 or self.cost > self.spec.burst:
            return 60  # it never will: tell the client to back off a minute
        return max(1, math.ceil((self.cost - self.available) / self.spec.rate))

    def as_input(self) -> dict[str, Any]:
        return {"tier": self.spec.tier, "name": self.spec.name, "unit": self.spec.unit,
                "per_minute": self.spec.per_minute, "burst": self.spec.burst,
                "available": math.floor(self.available), "cost": self.cost,
                "remaining": self.remaining, "reset_seconds": math.ceil(self.reset_seconds())}


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """The buckets of one request and whether its cost was taken from them."""

    buckets: tuple[Bucket, ...]
    reserved: bool  # every bucket had room and the cost was taken: give it back if the request is denied
    now: float

    @property
    def exceeded(self) -> bool:
        return any(b.exceeded for b in self.buckets)

    def as_input(self) -> dict[str, Any]:
        return {"exceeded": self.exceeded, "buckets": [b.as_input() for b in self.buckets]}

    def retry_after_seconds(self) -> int:
        return max((b.retry_seconds() for b in self.buckets), default=0) or 60

    def headers(self) -> dict[str, str]:
        """OpenAI-style x-ratelimit-* headers: per unit, the bucket with the least remaining
        (the tenant's before a credential's before a model's when they tie)."""
        out: dict[str, str] = {}
        for unit, (limit_name, remaining_name, reset_name) in _RATELIMIT_HEADERS:
            tightest: Bucket | None = None
            best: tuple[int, int] = (0, 0)
            for b in self.buckets:
                if b.spec.unit == unit:
                    rank = (b.remaining, _TIER_ORDER.get(b.spec.tier, 9))
                    if tightest is None or rank < best:
                        tightest, best = b, rank
            if tightest is not None:
                out[limit_name] = str(tightest.spec.per_minute)
                out[remaining_name] = str(best[0])
                out[reset_name] = duration(tightest.reset_seconds())
        return out


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: 20ms, 1s, 6m0s, 1h2m3s."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def plan(tenant: Any, key_id: str | None, model: str | None, estimated_tokens: int,
         prefix: str = "q") -> tuple[list[BucketSpec], dict[str, int]]:
    """The buckets a request of this tenant, API key and model draws from, and its cost per unit."""
    costs = {"requests": 1, "tokens": max(0, min(int(estimated_tokens), MAX_TOKEN_COST))}
    # The buckets depend only on the tenant file, the key and the model: remembered per tenant
    # object (a reload makes new ones), for granted models only (the model name is the client's).
    cacheable = model is None or model in tenant.models
    memo_key = (id(tenant), key_id, model, prefix)
    hit = _PLANS.get(memo_key) if cacheable else None
    if hit is not None and hit[0] is tenant:
        return list(hit[1]), costs
    specs = _bucket_specs(tenant, key_id, model, prefix)
    if cacheable:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[memo_key] = (tenant, tuple(specs))
    return specs, costs


_PLANS: dict[tuple[int, str | None, str | None, str], tuple[Any, tuple[BucketSpec, ...]]] = {}
_PLANS_MAX = 4096


def _bucket_specs(tenant: Any, key_id: str | None, model: str | None, prefix: str) -> list[BucketSpec]:
    tiers: list[tuple[str, str, Any, str]] = [("tenant", tenant.id, tenant.limits, f"{prefix}:{tenant.id}")]
    if key_id is not None:
        key = next((k for k in tenant.credentials.api_keys if k.id == key_id), None)
        if key is not None and key.limits is not None:
            tiers.append(("credential", key_id, key.limits, f"{prefix}:{tenant.id}:k:{key_id}"))
    if model is not None:
        grant = tenant.models.get(model)
        if grant is not None and grant.limits is not None:
            tiers.append(("model", model, grant.limits, f"{prefix}:{tenant.id}:m:{model}"))
    specs = []
    for tier, name, limits, key_prefix in tiers:
        if limits.requests_per_minute is not None:
            burst = limits.burst if limits.burst is not None else limits.requests_per_minute
            specs.append(BucketSpec(tier, name, "requests", limits.requests_per_minute, burst, key_prefix + ":r"))
        if limits.tokens_per_minute is not None:
            burst = limits.burst_tokens if limits.burst_tokens is not None else limits.tokens_per_minute
            specs.append(BucketSpec(tier, name, "tokens", limits.tokens_per_minute, burst, key_prefix + ":t"))
    return specs


class QuotaCounter(Protocol):
    def reserve(self, specs: Sequence[BucketSpec], costs: dict[str, int], now: float) -> QuotaUsage:
        """Take the cost from every bucket if each has room, else take nothing; raise QuotaUnavailable
        if the store cannot be reached."""

    def refund(self, usage: QuotaUsage) -> None:
        """Give a reservation back (the request was denied). Raise QuotaUnavailable on failure."""


def _level(state: tuple[float, float] | None, spec: BucketSpec, now: float) -> float:
    if state is None:
        return float(spec.burst)
    level, last = state
    return min(float(spec.burst), level + max(0.0, now - last) * spec.rate)


class LocalQuota:
    """Buckets in this process only: right for one replica; use Redis when several share a tenant."""

    MAX_BUCKETS = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}  # key -> (level, time of level)

    def reserve(self, specs: Sequence[BucketSpec], costs: dict[str, int], now: float) -> QuotaUsage:
        with self._lock:
            buckets = tuple(Bucket(s, _level(self._state.get(s.key), s, now), costs[s.unit]) for s in specs)
            fits = not any(b.exceeded for b in buckets)
            if fits:
                if len(self._state) > self.MAX_BUCKETS:
                    self._forget_full(now)
                for b in buckets:
                    last = self._state.get(b.spec.key, (0.0, now))[1]
                    self._state[b.spec.key] = (b.available - b.cost, max(now, last))
        return QuotaUsage(buckets, reserved=fits and bool(buckets), now=now)

    def refund(self, usage: QuotaUsage) -> None:
        if not usage.reserved:
            return
        with self._lock:
            for b in usage.buckets:
                state = self._state.get(b.spec.key)
                if state is not None:
                    self._state[b.spec.key] = (min(float(b.spec.burst), state[0] + b.cost), state[1])

    def _forget_full(self, now: float) -> None:
        """A bucket that has refilled is the same as one never seen: drop those (and only those)."""
        self._state = {k: v for k, v in self._state.items() if now - v[1] < 3600}


# KEYS: one per bucket. ARGV: now, then (rate per second, burst, cost) per bucket.
# Returns {fits, level1, level2, ...}; levels as strings (Redis would truncate Lua numbers).
_RESERVE = """
local now = tonumber(ARGV[1])
local levels, lasts = {}, {}
local fits = 1
for i = 1, #KEYS do
  local rate, burst, cost = tonumber(ARGV[i*3-1]), tonumber(ARGV[i*3]), tonumber(ARGV[i*3+1])
  local s = redis.call('HMGET', KEYS[i], 'l', 't')
  local level, last = burst, now
  if s[1] then
    last = tonumber(s[2])
    level = math.min(burst, tonumber(s[1]) + math.max(0, now - last) * rate)
  end
  levels[i], lasts[i] = level, math.max(now, last)
  if level < cost then fits = 0 end
end
local out = {fits}
for i = 1, #KEYS do
  local rate, burst, cost = tonumber(ARGV[i*3-1]), tonumber(ARGV[i*3]), tonumber(ARGV[i*3+1])
  if fits == 1 then
    redis.call('HSET', KEYS[i], 'l', tostring(levels[i] - cost), 't', tostring(lasts[i]))
    local ttl = 60
    if rate > 0 then ttl = math.ceil(burst / rate) + 60 end
    redis.call('EXPIRE', KEYS[i], ttl)
  end
  out[i+1] = tostring(levels[i])
end
return out
"""

# KEYS: the buckets reserved. ARGV: (burst, cost) per bucket.
_REFUND = """
for i = 1, #KEYS do
  local burst, cost = tonumber(ARGV[i*2-1]), tonumber(ARGV[i*2])
  local l = redis.call('HGET', KEYS[i], 'l')
  if l then redis.call('HSET', KEYS[i], 'l', tostring(math.min(burst, tonumber(l) + cost))) end
end
return 1
"""


class RedisQuota:
    """Buckets shared by every replica through Redis: one script call (one round trip) per check."""

    def __init__(self, url: str, timeout_seconds: float = 0.05, prefix: str = "llm-authz"):
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_seconds,
                                           socket_connect_timeout=timeout_seconds)
        self._reserve = self._redis.register_script(_RESERVE)
        self._refund = self._redis.register_script(_REFUND)
        self._prefix = prefix + ":quota"
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)

    def reserve(self, specs: Sequence[BucketSpec], costs: dict[str, int], now: float) -> QuotaUsage:
        if not specs:
            return QuotaUsage((), reserved=False, now=now)
        args: list[Any] = [repr(now)]
        for s in specs:
            args += [repr(s.rate), s.burst, costs[s.unit]]
        try:
            reply = self._reserve(keys=[f"{self._prefix}:{s.key}" for s in specs], args=args)
            fits = int(reply[0]) == 1
            levels = [float(v) for v in reply[1:]]
        except self._errors as exc:
            raise QuotaUnavailable(f"quota store unavailable: {type(exc).__name__}") from exc
        except (ValueError, TypeError, IndexError) as exc:
            raise QuotaUnavailable("quota store answered out of shape") from exc
        buckets = tuple(Bucket(s, level, costs[s.unit]) for s, level in zip(specs, levels, strict=True))
        return QuotaUsage(buckets, reserved=fits, now=now)

    def refund(self, usage: QuotaUsage) -> None:
        if not usage.reserved:
            return
        args: list[Any] = []
        for b in usage.buckets:
            args += [b.spec.burst, b.cost]
        try:
            self._refund(keys=[f"{self._prefix}:{b.spec.key}" for b in usage.buckets], args=args)
        except self._errors as exc:
            raise QuotaUnavailable(f"quota store unavailable: {type(exc).__name__}") from exc


def make_counter(backend: str, redis_url: str | None, redis_prefix: str = "llm-authz") -> QuotaCounter | None:
    if backend == "none":
        return None
    if backend == "redis":
        if not redis_url:
            raise ConfigError("quota_backend redis needs redis_url")
        return RedisQuota(redis_url, prefix=redis_prefix)
    return LocalQuota()
