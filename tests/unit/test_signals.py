"""input.signals: networks, baselines and concurrency from a credential's history."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_authz.errors import ConfigError
from llm_authz.signals import NetworkLocator, SignalTracker
from llm_authz.signals.baseline import MIN_OBSERVED

T0 = 1_800_000_000.0  # a fixed time; the tracker reads time only from its arguments


def use(tracker: SignalTracker, address: str, now: float, tokens: int = 100, body: int = 600,
        credential: str = "api_key:k1", allowed: bool = True, model: str = "gpt-4o") -> dict:
    obs = tracker.observation("acme", credential, address, tokens, body, model, "chat", now)
    signals = tracker.signals(obs)
    tracker.record(obs, allowed)
    return signals


def test_public_addresses_are_placed_by_prefix_and_country() -> None:
    locate = NetworkLocator().locate
    gb, us = locate("81.2.69.160"), locate("8.8.8.8")
    assert (gb.prefix, gb.kind, gb.country) == ("81.2.69.0/24", "public", "GB")
    assert (us.prefix, us.country) == ("8.8.8.0/24", "US")
    assert locate("2001:4860:4860::8888").prefix == "2001:4860:4860::/48"
    assert locate("::ffff:8.8.8.8").prefix == "8.8.8.0/24"  # an IPv4-mapped address is the IPv4 one


@pytest.mark.parametrize("address,kind,prefix", [
    ("127.0.0.1", "loopback", "127.0.0.0/24"), ("10.1.2.3", "private", "10.1.2.0/24"),
    ("192.168.7.9", "private", "192.168.7.0/24"), ("169.254.1.1", "link_local", "169.254.1.0/24"),
    ("::1", "loopback", "::/48"), (None, "unknown", "unknown"), ("not-an-ip", "unknown", "unknown"),
])
def test_non_public_addresses_count_by_prefix_without_a_country(address, kind, prefix) -> None:
    net = NetworkLocator().locate(address)
    assert (net.kind, net.prefix, net.country) == (kind, prefix, None)


def test_operator_labels_come_first_longest_prefix_winning(tmp_path: Path) -> None:
    path = tmp_path / "networks.yaml"
    path.write_text("networks:\n"
                    "  - {cidr: 10.0.0.0/8, name: corp, country: de}\n"
                    "  - {cidr: 10.20.0.0/16, name: tokyo-office, country: JP, asn: AS64500}\n")
    locate = NetworkLocator.from_file(path).locate
    assert locate("10.20.3.4").as_input() == {"prefix": "10.20.0.0/16", "kind": "labelled", "country": "JP",
                                              "asn": "AS64500", "label": "tokyo-office"}
    assert locate("10.9.9.9").country == "DE" and locate("10.9.9.9").prefix == "10.0.0.0/8"
    assert locate("81.2.69.160").country == "GB"


@pytest.mark.parametrize("text,why", [
    ("- {name: x}", "needs a `cidr`"), ("- {cidr: 10.0.0.0/33}", "entry 0"),
    ("- {cidr: 10.0.0.0/8, country: Germany}", "two-letter"), ("- {cidr: 10.0.0.0/8, colour: red}", "unknown key"),
    ("{a: 1}", "expected a list"), ("[: bad", "cannot read"),
])
def test_bad_label_files_are_refused_with_the_reason(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "n.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=why):
        NetworkLocator.from_file(path)


def test_a_new_credential_has_no_history_and_says_so() -> None:
    s = use(SignalTracker(), "81.2.69.160", T0)
    assert s["network"]["last"] is None and not s["network"]["seen_before"]
    assert s["baseline"]["established"] is False and s["baseline"]["observed"] == 0
    assert s["baseline"]["score"] == 0.0 and s["baseline"]["features"]["tokens_per_request"]["z"] is None
    assert s["concurrency"]["networks"] == 1


def test_a_use_from_another_country_minutes_later_shows_where_and_when_the_last_was() -> None:
    tracker = SignalTracker()
    use(tracker, "81.2.69.160", T0)
    s = use(tracker, "8.8.8.8", T0 + 120)
    assert s["network"]["country"] == "US" and not s["network"]["seen_before"]
    assert s["network"]["last"]["country"] == "GB" and s["network"]["last"]["seconds_ago"] == 120
    assert s["network"]["recent"]["countries"] == ["GB", "US"] and s["network"]["recent"]["networks"] == 2
    assert s["concurrency"]["networks"] == 1  # two minutes apart: not at once
    s = use(tracker, "8.8.8.9", T0 + 150)
    assert s["network"]["seen_before"] and s["network"]["last"]["country"] == "US"
    assert use(tracker, "81.2.69.161", T0 + 160)["concurrency"]["networks"] == 2


def test_networks_used_at_once_are_counted() -> None:
    tracker = SignalTracker()
    for i in range(4):
        s = use(tracker, f"10.0.{i}.1", T0 + i)
    assert s["concurrency"]["networks"] == 4
    assert use(tracker, "10.0.0.1", T0 + 200)["concurrency"]["networks"] == 1  # a minute on, only this one


def test_twenty_times_the_usual_tokens_scores_high_and_a_steady_credential_does_not() -> None:
    tracker = SignalTracker()
    for i in range(MIN_OBSERVED + 5):
        steady = use(tracker, "10.0.0.1", T0 + i * 7, tokens=100 + (i % 3) * 5, credential="api_key:steady")
        use(tracker, "10.0.0.2", T0 + i * 7, tokens=100 + (i % 3) * 5, credential="api_key:bursty")
    assert steady["baseline"]["established"] and steady["baseline"]["score"] < 2
    burst = use(tracker, "10.0.0.2", T0 + 200, tokens=2000, body=12000, credential="api_key:bursty")
    b = burst["baseline"]
    assert b["score"] > 10 and b["score_feature"] in ("tokens_per_request", "body_bytes", "tokens_per_minute")
    tokens = b["features"]["tokens_per_request"]
    assert tokens["value"] == 2000 and 95 < tokens["typical"] < 115 and tokens["z"] > 10


def test_denied_requests_do_not_teach_the_baseline_but_do_count_as_network_uses() -> None:
    tracker = SignalTracker()
    for i in range(MIN_OBSERVED):
        use(tracker, "10.0.0.1", T0 + i, tokens=100)
    for i in range(50):
        use(tracker, "8.8.8.8", T0 + 30 + i, tokens=50_000, allowed=False)
    s = use(tracker, "10.0.0.1", T0 + 100, tokens=100)
    assert s["baseline"]["observed"] == MIN_OBSERVED and s["baseline"]["score"] < 1
    assert s["network"]["last"]["country"] == "US"


def test_model_and_hour_mix_are_shares_of_past_requests() -> None:
    tracker = SignalTracker()
    for i in range(3):
        use(tracker, "10.0.0.1", T0 + i, model="gpt-4o")
    use(tracker, "10.0.0.1", T0 + 5, model="other")
    s = use(tracker, "10.0.0.1", T0 + 6, model="gpt-4o")
    assert s["baseline"]["model_share"] == 0.75 and s["baseline"]["hour_share"] == 1.0
    assert use(tracker, "10.0.0.1", T0 + 7200, model="new")["baseline"]["model_share"] == 0.0


def test_per_minute_rates_get_a_baseline_after_a_few_active_minutes() -> None:
    tracker = SignalTracker()
    for minute in range(5):
        for i in range(3):
            s = use(tracker, "10.0.0.1", T0 + minute * 60 + i)
    rpm = s["baseline"]["features"]["requests_per_minute"]
    assert rpm["established"] and rpm["value"] == 3 and rpm["typical"] == pytest.approx(3, abs=0.01)
    for i in range(60):
        s = use(tracker, "10.0.0.1", T0 + 5 * 60 + i * 0.5)
    assert s["baseline"]["features"]["requests_per_minute"]["z"] > 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.ip_addresses().map(str), st.text(max_size=20)),
                          st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
                          st.integers(min_value=-(2**70), max_value=2**70), st.booleans()), max_size=30))
def test_any_history_gives_well_formed_signals(uses) -> None:
    tracker = SignalTracker()
    for address, offset, tokens, allowed in uses:
        s = use(tracker, address, T0 + offset, tokens=tokens, body=abs(tokens), allowed=allowed)
        assert s["concurrency"]["networks"] >= 1 and s["network"]["recent"]["networks"] >= 1
        assert s["baseline"]["score"] >= 0
        last = s["network"]["last"]
        assert last is None or last["seconds_ago"] >= 0


# ---- through the Checker: what the policy sees and what the tracker learns -------------------------

ACME_KEY = "sk-llm-acme-demo-6f1c0e2a9b7d4e58"


@pytest.fixture(scope="module")
def acme_signals(tmp_path_factory):
    import shutil

    from llm_authz.config import Config
    from llm_authz.runtime import load_snapshot
    from tests.conftest import REPO

    snapshots = {}
    for action in ("deny", "flag", "observe"):
        tmp = tmp_path_factory.mktemp(f"signals-{action}")
        shutil.copytree(REPO / "tenants", tmp / "tenants")
        path = tmp / "tenants" / "acme.yaml"
        path.write_text(path.read_text() + f"signals: {{action: {action}, max_concurrent_networks: 1}}\n")
        snapshots[action] = load_snapshot(Config(tenants=tmp / "tenants", policies=REPO / "policies" / "rego"))
    yield snapshots
    for snapshot in snapshots.values():
        snapshot.revision.close()


class _Records:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def append(self, record: dict) -> None:
        self.records.append(record)


def _chat(source: str, model: str = "gpt-4o"):
    from tests.helpers import check_request

    return check_request(headers={"authorization": f"Bearer {ACME_KEY}"}, source=source,
                         body={"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})


def _anomalies(action: str) -> float:
    from llm_authz import metrics

    return metrics.ANOMALIES.labels(tenant="acme", kind="concurrent_networks", action=action)._value.get()


@pytest.mark.parametrize("action", ["deny", "flag", "observe"])
def test_the_checker_shows_the_policy_each_requests_signals_and_learns_from_allowed_ones(acme_signals, action):
    from llm_authz.check import Checker

    sink = _Records()
    checker = Checker(acme_signals[action], audit=sink, signals=SignalTracker())
    before = _anomalies(action)
    for _ in range(2):
        assert not checker.check(_chat("81.2.69.160")).HasField("denied_response")
    first, second = (r["input"]["signals"] for r in sink.records)
    assert first["credential"] == second["credential"] == "api_key:ak_acme_1"
    assert first["network"]["prefix"] == "81.2.69.0/24" and first["network"]["country"] == "GB"
    assert first["network"]["last"] is None and first["baseline"]["observed"] == 0
    assert second["network"]["seen_before"] and second["network"]["last"]["prefix"] == "81.2.69.0/24"
    assert second["baseline"]["observed"] == 1  # learned from the first, allowed, request
    assert second["baseline"]["features"]["body_bytes"]["value"] == len(_chat("81.2.69.160").attributes.request.http.raw_body)
    assert second["baseline"]["model_share"] == 1.0  # the same model and operation as before
    from tests.helpers import check_request

    other_model = _chat("81.2.69.160", model="gpt-4o-mini")
    other_operation = check_request(path="/v1/responses", headers={"authorization": f"Bearer {ACME_KEY}"},
                                    source="81.2.69.160", body={"model": "gpt-4o", "input": "hi"})
    for request in (other_model, other_operation):
        assert not checker.check(request).HasField("denied_response")
        assert sink.records[-1]["input"]["signals"]["baseline"]["model_share"] == 0.0  # a new model/operation
    assert sink.records[-1]["input"]["signals"]["baseline"]["observed"] == 3
    assert second["baseline"]["features"]["tokens_per_request"]["value"] == first["baseline"]["features"][
        "tokens_per_request"]["value"] > 0
    # A second network within the minute is one more than this tenant allows.
    response = checker.check(_chat("8.8.8.8"))
    assert response.HasField("denied_response") == (action == "deny")
    assert _anomalies(action) == before + 1
    third = sink.records[-1]["input"]["signals"]
    assert third["concurrency"]["networks"] == 2 and third["network"]["country"] == "US"
    after_denial = checker.check(_chat("81.2.69.160"))
    signals = sink.records[-1]["input"]["signals"]
    # A denied request counts as a use of its network but does not teach the baseline.
    assert signals["network"]["last"]["prefix"] == "8.8.8.0/24"
    assert signals["baseline"]["observed"] == (4 if action == "deny" else 5)
    assert after_denial is not None
    # A request no route matches still gets its signals (and its answer).
    unrouted = checker.check(check_request(path="/v1/not-an-api", headers={"authorization": f"Bearer {ACME_KEY}"},
                                           source="81.2.69.160", body={"model": "gpt-4o"}))
    assert unrouted.denied_response.status.code == 403  # route_not_allowed, not a failure
    assert sink.records[-1]["input"]["signals"]["credential"] == "api_key:ak_acme_1"


def test_a_model_named_in_the_path_is_the_model_the_signals_compare(acme_signals):
    """KServe and Gemini name the model in the path, not the body: two such models are two models."""
    from llm_authz.check import Checker
    from tests.helpers import check_request

    sink = _Records()
    checker = Checker(acme_signals["observe"], audit=sink, signals=SignalTracker())

    def infer(model: str):
        return check_request(path=f"/v2/models/{model}/infer", headers={"authorization": f"Bearer {ACME_KEY}"},
                             source="81.2.69.160",
                             body={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})

    for _ in range(2):
        assert not checker.check(infer("fraud-scorer")).HasField("denied_response")
    assert sink.records[-1]["input"]["signals"]["baseline"]["model_share"] == 1.0
    checker.check(infer("churn-scorer"))  # not granted: denied, but its signals are computed first
    assert sink.records[-1]["input"]["signals"]["baseline"]["model_share"] == 0.0


def test_a_check_whose_answer_cannot_be_built_still_counts_as_a_use_of_its_network(acme_signals, monkeypatch):
    from llm_authz import metrics
    from llm_authz.check import Checker
    from tests.helpers import first_answer_fails

    sink = _Records()
    checker = Checker(acme_signals["observe"], audit=sink, signals=SignalTracker())
    first_answer_fails(monkeypatch)
    errors = metrics.INTERNAL_ERRORS._value.get()
    assert checker.check(_chat("81.2.69.160")).denied_response.status.code == 500
    assert metrics.INTERNAL_ERRORS._value.get() == errors + 1  # the mapping failure, and nothing in learning
    assert not checker.check(_chat("81.2.69.160")).HasField("denied_response")
    signals = sink.records[-1]["input"]["signals"]
    assert signals["network"]["last"]["prefix"] == "81.2.69.0/24"  # the failed check was a use of the network
    assert signals["baseline"]["observed"] == 0  # but, denied, it taught the baseline nothing
