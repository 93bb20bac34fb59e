"""A credential's usual behaviour and how far one request is from it.

Each volume (tokens per request, body bytes, requests and tokens per active minute) keeps an
exponentially weighted mean and spread of its logarithm: volumes are compared by ratio, so 20×
the usual is far whatever the usual is. The deviation of a value is

    z = (ln(1 + value) − mean) / max(spread, MIN_SPREAD)

(how many usual spreads above the typical value; MIN_SPREAD ≈ a 30 % change keeps a perfectly
steady credential from calling a small change anomalous). Only the high side counts: sending
less than usual is not suspicious. The score of a request is its largest z over the volumes that
have a baseline, and the input names that volume and shows every z, so the number can be
checked by hand. The model/operation mix and the hour of day are reported as shares of past
requests, for rules that want them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

HALF_LIFE = 50  # observations: older ones weigh half as much after this many newer ones
MIN_SPREAD = 0.25
MIN_OBSERVED = 20  # requests before the credential has a baseline
MIN_MINUTES = 3  # active minutes before the per-minute rates have one
MAX_MIX = 32  # model/operation pairs remembered per credential
_ALPHA_FLOOR = 1 - 0.5 ** (1 / HALF_LIFE)
VOLUMES = ("tokens_per_request", "body_bytes", "requests_per_minute", "tokens_per_minute")


@dataclass(slots=True)
class Stat:
    """Exponentially weighted mean and variance of ln(1 + x)."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0

    def add(self, value: float) -> None:
        x = math.log1p(max(0.0, value))
        if self.n == 0:
            self.mean, self.var = x, 0.0
        else:
            alpha = max(1.0 / (self.n + 1), _ALPHA_FLOOR)
            d = x - self.mean
            self.mean += alpha * d
            self.var = (1 - alpha) * (self.var + alpha * d * d)
        self.n += 1

    def compare(self, value: float, needed: int) -> dict[str, Any]:
        spread = max(math.sqrt(self.var), MIN_SPREAD)
        established = self.n >= needed
        z = max(0.0, (math.log1p(max(0.0, value)) - self.mean) / spread) if self.n else 0.0
        return {"value": round(value, 3), "typical": round(math.expm1(self.mean), 3) if self.n else None,
                "spread": round(spread, 3), "z": round(z, 3) if established else None,
                "observed": self.n, "established": established}


@dataclass(slots=True)
class Baseline:
    """One credential's history. Updated from allowed requests only: a denied burst never becomes usual."""

    observed: int = 0
    tokens: Stat = field(default_factory=Stat)
    body: Stat = field(default_factory=Stat)
    rpm: Stat = field(default_factory=Stat)
    tpm: Stat = field(default_factory=Stat)
    minute: int = -1  # the minute being counted
    minute_requests: int = 0
    minute_tokens: int = 0
    mix: dict[str, int] = field(default_factory=dict)
    hours: list[int] = field(default_factory=lambda: [0] * 24)

    def _current_minute(self, minute: int) -> tuple[int, int]:
        """This minute's counts so far (0 if the counted minute is over)."""
        return (self.minute_requests, self.minute_tokens) if minute == self.minute else (0, 0)

    def compare(self, tokens: int, body_bytes: int, mix_key: str, hour: int, minute: int) -> dict[str, Any]:
        requests_now, tokens_now = self._current_minute(minute)
        features = {
            "tokens_per_request": self.tokens.compare(tokens, MIN_OBSERVED),
            "body_bytes": self.body.compare(body_bytes, MIN_OBSERVED),
            "requests_per_minute": self.rpm.compare(requests_now + 1, MIN_MINUTES),
            "tokens_per_minute": self.tpm.compare(tokens_now + tokens, MIN_MINUTES),
        }
        scored = [(f["z"], name) for name, f in features.items() if f["z"] is not None]
        score, by = max(scored) if scored else (0.0, None)
        total = sum(self.mix.values())
        return {
            "established": self.observed >= MIN_OBSERVED,
            "observed": self.observed,
            "min_observed": MIN_OBSERVED,
            "score": score,
            "score_feature": by if score > 0 else None,
            "features": features,
            "model_share": round(self.mix.get(mix_key, 0) / total, 3) if total else None,
            "hour_share": round(self.hours[hour] / self.observed, 3) if self.observed else None,
        }

    def add(self, tokens: int, body_bytes: int, mix_key: str, hour: int, minute: int) -> None:
        if minute != self.minute:
            if self.minute >= 0 and minute > self.minute:  # fold the finished active minute in
                self.rpm.add(self.minute_requests)
                self.tpm.add(self.minute_tokens)
            if minute > self.minute:
                self.minute, self.minute_requests, self.minute_tokens = minute, 0, 0
        if minute == self.minute:
            self.minute_requests += 1
            self.minute_tokens += tokens
        self.tokens.add(tokens)
        self.body.add(body_bytes)
        self.observed += 1
        self.hours[hour] += 1
        if mix_key in self.mix or len(self.mix) < MAX_MIX:
            self.mix[mix_key] = self.mix.get(mix_key, 0) + 1
