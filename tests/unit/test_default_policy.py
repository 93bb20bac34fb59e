"""The default policy decides exactly as its first version did, over every combination of conditions.

The policy was restructured so the engine evaluates the common case (allow) cheaply; this holds
the rewrite to the original (kept in tests/unit/data/authz_reference.rego), decision by decision.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from llm_authz.engine.base import UNDEFINED
from llm_authz.engine.embedded import EmbeddedEngine
from llm_authz.errors import PolicyError

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "policies" / "rego" / "llm" / "authz.rego"
REFERENCE = Path(__file__).parent / "data" / "authz_reference.rego"

TENANTS = {
    "acme": {
        "id": "acme", "tier": "premium",
        "models": {"gpt-4o": {"operations": ["chat"]}, "text-embed-3": {"operations": ["embeddings"]},
                   "small": {"operations": ["chat"], "max_tokens": 100}},
        "scopes_required": ["inference:invoke"],
        "limits": {"max_body_bytes": 1000, "max_tokens": 4096, "requests_per_minute": 5, "tokens_per_minute": 1000},
        "network": {"allowed_cidrs": ["10.0.0.0/8", "127.0.0.1/32"]},
        "signals": {"action": "deny", "max_score": 6.0, "travel_minutes": 60, "max_concurrent_networks": 3},
    },
    "open": {
        "id": "open", "tier": "free", "models": {"gpt-4o": {"operations": ["chat", "embeddings"]}},
        "scopes_required": [], "limits": {"max_body_bytes": 100000, "max_tokens": 512},
        "network": {"allowed_cidrs": ["0.0.0.0/0", "::/0"]},
        "signals": {"action": "flag", "max_score": 6.0, "travel_minutes": 0, "max_concurrent_networks": 3,
                    "max_countries": 1},
    },
    # A malformed network entry: strict builtin errors make it a policy error in both versions.
    "broken": {
        "id": "broken", "tier": "free", "models": {"gpt-4o": {"operations": ["chat"]}},
        "scopes_required": [], "limits": {"max_body_bytes": 1000, "max_tokens": 512},
        "network": {"allowed_cidrs": ["10.0.0.0/8", "not-a-cidr"]},
    },
}


def _identity(authenticated: bool, method: str, tenant: str | None, scopes: list[str], error: str | None) -> dict[str, Any]:
    return {"authenticated": authenticated, "method": method, "subject": "s", "issuer": None, "tenant": tenant,
            "scopes": scopes, "key_id": None, "claims": {}, "error": error, "error_description": None}


IDENTITIES = [
    _identity(True, "api_key", "acme", ["inference:invoke"], None),
    _identity(True, "jwt", "acme", ["other"], None),
    _identity(True, "api_key", "acme", ["models:read"], None),
    _identity(True, "api_key", "open", [], None),
    _identity(True, "api_key", "broken", [], None),
    _identity(True, "api_key", "ghost", ["inference:invoke"], None),
    _identity(False, "none", None, [], "missing_credential"),
    _identity(False, "api_key", None, [], "invalid_credential"),
    _identity(False, "jwt", None, [], "missing_credential"),  # no such caller today; still decided alike
]
HINTS = [None, "acme", "other"]
ADDRESSES = ["127.0.0.1", "10.1.2.3", "192.0.2.1", None]
PAYLOADS = [
    {"error": error, "bytes": size, "truncated": truncated, "max_tokens": max_tokens}
    for error in (None, "duplicate_key")
    for size in (200, 5000)
    for truncated in (False, True)
    for max_tokens in (None, 50, 256, 5000)
]
# null when quotas are off; a bucket with room, one without, none at all
def _bucket(unit: str, available: int, cost: int) -> dict[str, Any]:
    return {"tier": "tenant", "name": "acme", "unit": unit, "per_minute": 5, "burst": 5,
            "available": available, "cost": cost, "remaining": 0, "reset_seconds": 12}


QUOTAS = [None, {"exceeded": False, "buckets": [_bucket("requests", 4, 1), _bucket("tokens", 900, 10)]},
          {"exceeded": True, "buckets": [_bucket("requests", 0, 1), _bucket("tokens", 900, 10)]},
          {"exceeded": True, "buckets": [_bucket("requests", 4, 1), _bucket("tokens", 900, 5000)]},
          {"exceeded": False, "buckets": []}]
# null for tenants without `signals:`; then a quiet credential, one that moved countries a minute
# ago, one far above its baseline, one used from many networks at once
def _signals(last_country: str | None, seconds_ago: float, score: float, established: bool, networks: int,
             countries: list[str]) -> dict[str, Any]:
    here = {"prefix": "81.2.69.0/24", "kind": "public", "country": "GB", "asn": None, "label": None}
    last = None if last_country is None else {**here, "country": last_country, "seconds_ago": seconds_ago}
    return {"credential": "api_key:k", "network": {**here, "seen_before": True, "last": last,
                                                   "recent": {"window_seconds": 86400, "networks": networks,
                                                              "countries": countries, "asns": []}},
            "concurrency": {"window_seconds": 60, "networks": networks},
            "baseline": {"established": established, "observed": 40, "min_observed": 20, "score": score,
                         "score_feature": "tokens_per_request", "features": {}, "model_share": 1.0,
                         "hour_share": 0.5}}


SIGNALS = [None, _signals("GB", 5, 0.5, True, 1, ["GB"]), _signals("US", 60, 0.5, True, 1, ["GB", "US"]),
           _signals(None, 0, 40.0, True, 1, ["GB"]), _signals("GB", 5, 40.0, False, 5, ["GB"])]
MODELS = [
    {"name": "gpt-4o", "operation": "chat", "source": "body"},
    {"name": "gpt-4o", "operation": "embeddings", "source": "body"},
    {"name": "small", "operation": "chat", "source": "path"},
    {"name": "gpt-5", "operation": "chat", "source": "body"},
    {"name": None, "operation": None, "source": None},
    {"name": "text-embed-3", "operation": "embeddings", "source": "path"},
    # read-only routes: no model, a granted model, a model not granted
    {"name": None, "operation": "list_models", "source": None},
    {"name": "small", "operation": "model_metadata", "source": "path"},
    {"name": "gpt-5", "operation": "model_metadata", "source": "path"},
    {"name": None, "operation": "server_metadata", "source": None},
]


def _doc(identity: dict, hint: str | None, address: str | None, payload: dict, model: dict,
         quota: dict | None, signals: dict | None = None) -> dict[str, Any]:
    return {
        "quota": quota,
        "signals": signals,
        "identity": identity,
        "tenant": {"id": identity["tenant"], "tier": None, "known": identity["tenant"] in TENANTS, "hint": hint},
        "source": {"address": address, "port": 1234, "principal": None, "certificate_present": False},
        "payload": {"content_type": "application/json", "parsed": True, "stream": False, **payload},
        "model": {"family": "openai", "version": None, **model},
        "request": {"headers": {"x-tenant-id": hint or ""}},
    }


def _all_docs() -> list[dict[str, Any]]:
    combos = list(itertools.product(IDENTITIES, HINTS, ADDRESSES, PAYLOADS, MODELS, QUOTAS))
    # Every identity, hint, address, model and quota together, each with a few payloads; a fixed
    # sample of the rest keeps the test quick.
    rng = random.Random(6)
    picked = [c for c in combos if c[3] in (PAYLOADS[0], PAYLOADS[5]) and c[5] in (QUOTAS[0], QUOTAS[2])]
    picked += rng.sample(combos, 2000)
    docs = [_doc(*c) for c in picked]
    # every signal case with each identity and quota, on a request otherwise allowed for acme and open
    for identity, quota, signals in itertools.product(IDENTITIES, QUOTAS, SIGNALS):
        docs.append(_doc(identity, None, "127.0.0.1", PAYLOADS[0], MODELS[0], quota, signals))
    return docs


@pytest.fixture(scope="module")
def engines() -> Any:
    new = EmbeddedEngine({"authz.rego": POLICY.read_text()}, {"tenants": TENANTS})
    ref = EmbeddedEngine({"ref.rego": REFERENCE.read_text()}, {"tenants": TENANTS})
    yield new, ref
    new.close()
    ref.close()


def _decide(engine: EmbeddedEngine, query: str, doc: Any) -> Any:
    try:
        value = engine.evaluate(query, doc)
    except PolicyError:
        return "error"
    return "undefined" if value is UNDEFINED else value


def test_every_combination_decides_as_the_first_version(engines: Any) -> None:
    new, ref = engines
    seen: set[tuple[Any, ...]] = set()
    flagged = set()
    for doc in _all_docs():
        got = _decide(new, "data.llm.authz.decision", doc)
        want = _decide(ref, "data.llm.authz_reference.decision", doc)
        assert got == want, doc
        seen.add(("error",) if got == "error" else (got["allow"], got["status"], tuple(got["reasons"])))
        if got != "error" and got["allow"] and got.get("flags"):
            flagged.update(got["anomalies"])
    assert any("credential_anomaly" in s[2] for s in seen if s != ("error",))
    assert flagged == {"countries", "baseline", "concurrent_networks"}  # "open" turns travel off
    # the combinations reach every outcome the policy has
    statuses = {s[1] for s in seen if s != ("error",)}
    assert ("error",) in seen and {200, 400, 401, 403, 413, 429, 500} <= statuses


def test_allow_agrees_with_an_empty_set_of_reasons(engines: Any) -> None:
    new, _ = engines
    for doc in _all_docs()[::7]:
        allow = _decide(new, "data.llm.authz.allow", doc)
        reasons = _decide(new, "data.llm.authz.reasons", doc)
        if "error" in (allow, reasons):
            continue
        if doc["identity"]["authenticated"]:
            assert (allow is True) == (reasons == []), doc


def test_the_projection_changes_no_decision(engines: Any) -> None:
    new, _ = engines
    whole = EmbeddedEngine({"authz.rego": POLICY.read_text()}, {"tenants": TENANTS}, project_input=False)
    try:
        for doc in _all_docs()[::5]:
            assert _decide(new, "data.llm.authz.decision", doc) == _decide(whole, "data.llm.authz.decision", doc)
    finally:
        whole.close()
