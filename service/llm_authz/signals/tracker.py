"""Per-credential history kept between checks, and the signals one request gets from it.

`observe` reads the history as it was before this request and returns `input.signals`;
`record` adds the request once the decision is known. Every use of a credential counts for the
network signals (a credential presented from somewhere was used from there, allowed or not);
only allowed requests teach the baseline. State lives in this process, bounded: at most
MAX_NETWORKS networks per credential and MAX_CREDENTIALS credentials (least recently used go).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from llm_authz.signals.baseline import Baseline
from llm_authz.signals.networks import Network, NetworkLocator

RECENT_SECONDS = 86400  # the networks and countries a credential was used from "recently"
CONCURRENT_SECONDS = 60  # networks using a credential "at once"
MAX_NETWORKS = 16
MAX_CREDENTIALS = 100_000
MAX_TOKENS = 1 << 40  # the same bound as the quota's token cost


@dataclass(slots=True)
class Seen:
    network: Network
    first: float
    last: float
    uses: int = 0


@dataclass(slots=True)
class History:
    networks: OrderedDict[str, Seen] = field(default_factory=OrderedDict)  # least recently used first
    last: Seen | None = None
    last_time: float = 0.0
    baseline: Baseline = field(default_factory=Baseline)


@dataclass(frozen=True, slots=True)
class Observation:
    """One request as the tracker sees it (nothing secret: ids, a network, sizes, a time)."""

    tenant: str
    credential: str
    network: Network
    tokens: int
    body_bytes: int
    mix_key: str
    hour: int
    minute: int
    now: float


def credential_id(identity: Any) -> str | None:
    """A name for the credential, the same on every use (never the secret itself)."""
    if identity.method == "api_key" and identity.key_id:
        return f"api_key:{identity.key_id}"
    if identity.method == "jwt" and identity.subject:
        return f"jwt:{identity.issuer or ''}#{identity.subject}"
    if identity.method == "mtls" and identity.subject:
        return f"mtls:{identity.subject}"
    return None


class SignalTracker:
    def __init__(self, locator: NetworkLocator | None = None):
        self.locator = locator or NetworkLocator()
        self._lock = threading.Lock()
        self._histories: OrderedDict[tuple[str, str], History] = OrderedDict()

    def observation(self, tenant: str, credential: str, address: str | None, estimated_tokens: int,
                    body_bytes: int, model: str | None, operation: str | None, now: float) -> Observation:
        hour = int(now // 3600) % 24
        return Observation(tenant, credential, self.locator.locate(address),
                           max(0, min(int(estimated_tokens), MAX_TOKENS)), max(0, int(body_bytes)),
                           f"{model or ''}/{operation or ''}", hour, int(now // 60), now)

    def signals(self, obs: Observation) -> dict[str, Any]:
        """input.signals for this request: the history before it, compared with it."""
        with self._lock:
            history = self._histories.get((obs.tenant, obs.credential))
            return _signals(history, obs)

    def record(self, obs: Observation, allowed: bool) -> None:
        key = (obs.tenant, obs.credential)
        with self._lock:
            history = self._histories.get(key)
            if history is None:
                history = self._histories[key] = History()
                if len(self._histories) > MAX_CREDENTIALS:
                    self._histories.popitem(last=False)
            else:
                self._histories.move_to_end(key)
            seen = history.networks.get(obs.network.prefix)
            if seen is None:
                seen = history.networks[obs.network.prefix] = Seen(obs.network, obs.now, obs.now)
                if len(history.networks) > MAX_NETWORKS:
                    history.networks.popitem(last=False)
            else:
                history.networks.move_to_end(obs.network.prefix)
            seen.last = max(seen.last, obs.now)
            seen.uses += 1
            if obs.now >= history.last_time:
                history.last, history.last_time = seen, obs.now
            if allowed:
                history.baseline.add(obs.tokens, obs.body_bytes, obs.mix_key, obs.hour, obs.minute)


def _signals(history: History | None, obs: Observation) -> dict[str, Any]:
    here = obs.network
    recent: list[Seen] = []
    concurrent: set[str] = {here.prefix}
    last = None
    if history is not None:
        recent = [s for s in history.networks.values() if obs.now - s.last <= RECENT_SECONDS]
        concurrent |= {s.network.prefix for s in recent if obs.now - s.last <= CONCURRENT_SECONDS}
        if history.last is not None:
            prev = history.last.network
            last = {"prefix": prev.prefix, "kind": prev.kind, "country": prev.country, "asn": prev.asn,
                    "label": prev.label, "seconds_ago": round(max(0.0, obs.now - history.last_time), 3)}
    baseline = history.baseline if history is not None else Baseline()
    return {
        "credential": obs.credential,
        "network": {
            **here.as_input(),
            "seen_before": any(s.network.prefix == here.prefix for s in recent),
            "last": last,
            "recent": {
                "window_seconds": RECENT_SECONDS,
                "networks": len({s.network.prefix for s in recent} | {here.prefix}),
                "countries": sorted({s.network.country for s in recent if s.network.country}
                                    | ({here.country} if here.country else set())),
                "asns": sorted({s.network.asn for s in recent if s.network.asn} | ({here.asn} if here.asn else set())),
            },
        },
        "concurrency": {"window_seconds": CONCURRENT_SECONDS, "networks": len(concurrent)},
        "baseline": baseline.compare(obs.tokens, obs.body_bytes, obs.mix_key, obs.hour, obs.minute),
    }
