"""Key sets: parsing, and a real local JWKS server for caching, rotation, outages and kid floods."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from llm_authz import __version__, metrics
from llm_authz.config import JwksSettings
from llm_authz.errors import JwksError
from llm_authz.identity.jwks import (SUPPORTED_ALGORITHMS, JwksRegistry, RemoteKeySource, load_jwks_file, parse_jwks,
                                     ttl_from_cache_control)
from llm_authz.identity.jwt import IssuerBinding, JwtVerifier
from llm_authz.tenants import JwtIssuer
from tests.identity_fixtures import AUDIENCE, ISSUER, JwksServer, claims, new_key


@pytest.fixture
def server():
    running = JwksServer().start()
    yield running
    running.stop()


def settings(**kw) -> JwksSettings:
    base = {"fetch_timeout_seconds": 1.0, "min_ttl_seconds": 60, "unknown_kid_interval_seconds": 30,
            "retry_seconds": 0.2}
    return JwksSettings(**{**base, **kw})


class ManualClock:
    """The sources' scheduling clock, moved by the test instead of sleeping through real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sources: list[RemoteKeySource] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for src in self.sources:
            src.wake()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sources(clock):
    made: list[RemoteKeySource] = []

    def make(url: str, **kw) -> RemoteKeySource:
        src = RemoteKeySource(url, settings(**kw), clock=clock)
        clock.sources.append(src)
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()


def soon(seconds: float = 1.0) -> float:
    return time.monotonic() + seconds


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def settle() -> None:
    """Give the refresher thread a moment to act on a clock move (for asserting it did nothing)."""
    time.sleep(0.15)


# ---- parsing -----------------------------------------------------------------------------------

def test_parse_accepts_rsa_ec_and_okp_keys_and_skips_encryption_keys():
    keys = [new_key(a, kid=a) for a in ("RS256", "ES256", "ES384", "ES512", "EdDSA")]
    enc = {**new_key("RS256", kid="enc").jwk, "use": "enc"}
    ks, problems = parse_jwks(orjson.dumps({"keys": [k.jwk for k in keys] + [enc]}))
    assert not problems and len(ks) == 5
    assert ks.find("ES384", "ES384").algorithms == {"ES384"}
    assert ks.find("enc", "RS256") is None


def _short_rsa_jwk() -> dict:
    return {**RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key(), as_dict=True), "kid": "short"}


@pytest.mark.parametrize("doc, message", [
    (b"{not json", "not valid JSON"),
    (b"[]", '"keys" array'),
    (b'{"keys": {}}', '"keys" array'),
    (b'{"keys": []}', "no usable signature key"),
    (orjson.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}), "shared secret"),
    (lambda: orjson.dumps({"keys": [{**new_key("ES256").jwk, "d": "AAAA"}]}), "private key"),
    (lambda: orjson.dumps({"keys": [new_key("ES256", "a").jwk, new_key("ES256", "a").jwk]}), "duplicate kid"),
    (lambda: orjson.dumps({"keys": [_short_rsa_jwk()]}), "too short"),
    (lambda: orjson.dumps({"keys": [{**new_key("ES256").jwk, "crv": "secp256k1"}]}), "not supported"),
    (lambda: orjson.dumps({"keys": [{**new_key("ES256").jwk, "alg": "RS256"}]}), "does not fit"),
    (lambda: orjson.dumps({"keys": [{**new_key("ES256").jwk, "alg": "HS256"}]}), "does not fit"),
    (lambda: orjson.dumps({"keys": [{**new_key("ES256").jwk, "x": "!!"}]}), "not a valid public key"),
    (lambda: orjson.dumps({"keys": [{**new_key("ES256").jwk, "kid": 5}]}), "kid must be a string"),
    (orjson.dumps({"keys": ["nope"]}), "not a JSON object"),
])
def test_parse_is_strict_for_files(doc, message):
    raw = doc() if callable(doc) else doc
    with pytest.raises(JwksError, match=message):
        parse_jwks(raw, strict=True)


def test_parse_lenient_skips_bad_keys_but_keeps_good_ones():
    good = new_key("ES256", kid="good")
    ks, problems = parse_jwks(orjson.dumps({"keys": [{"kty": "oct", "k": "AA"}, good.jwk]}), strict=False)
    assert len(ks) == 1 and ks.find("good", "ES256") and len(problems) == 1


def test_errors_never_carry_key_material(tmp_path):
    jwk = {**new_key("ES256").jwk, "d": "cHJpdmF0ZS1wYXJ0LW9mLXRoZS1rZXk"}
    path = tmp_path / "k.json"
    path.write_bytes(orjson.dumps({"keys": [jwk]}))
    with pytest.raises(JwksError) as info:
        load_jwks_file(path)
    assert jwk["d"] not in str(info.value) and jwk["x"] not in str(info.value)


@pytest.mark.parametrize("header, expected", [
    (None, 300), ("max-age=120", 120), ("public, max-age=600, must-revalidate", 600),
    ('max-age="90"', 90), ("max-age=5", 60), ("max-age=999999", 86400), ("no-store", 60),
    ("no-cache, max-age=600", 60), ("max-age=abc", 300),
])
def test_ttl_honours_max_age_within_bounds(header, expected):
    assert ttl_from_cache_control(header, JwksSettings()) == expected


def test_ttl_no_cache_is_the_minimum_and_an_unreadable_max_age_the_default():
    assert ttl_from_cache_control("no-cache", JwksSettings(min_ttl_seconds=0.5)) == 0.5
    assert ttl_from_cache_control("max-age=X600", JwksSettings()) == 300


def test_a_key_set_arriving_in_many_chunks_is_read_whole(server, sources):
    keys = [new_key("ES256", kid=f"k{i}") for i in range(400)]  # about 100 KB
    server.serve("/jwks", *keys, pieces=20)
    src = sources(server.url("/jwks"))
    assert src.wait_first(5)
    assert len(src.keys) == 400 and src.key_for("k399", "ES256", soon()).kid == "k399"


def test_a_response_of_exactly_max_bytes_is_read_and_one_byte_more_refused(server, sources):
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    base = len(orjson.dumps({**ep.body, "pad": ""}).replace(b":", b": ").replace(b",", b", "))
    ep.body = {**ep.body, "pad": "p" * (1024 - base)}
    assert sources(server.url("/jwks"), max_bytes=1024).wait_first(5)
    assert sources(server.url("/jwks"), max_bytes=1024).key_for("a", "ES256", soon()).kid == "a"
    ep.body = {**ep.body, "pad": "p" * (1025 - base)}
    src = sources(server.url("/jwks"), max_bytes=1024)
    assert src.wait_first(5) and len(src.keys) == 0


def test_an_unusable_key_in_a_fetched_set_is_skipped_and_the_others_kept(server, sources):
    ep = server.serve("/jwks", new_key("ES256", kid="good"))
    ep.body = {"keys": [{"kty": "oct", "k": "AA", "kid": "bad"}, *ep.body["keys"]]}
    src = sources(server.url("/jwks"))
    assert src.wait_first(5)
    assert src.key_for("good", "ES256", soon()).kid == "good" and src.key_for("bad", "ES256", soon(0.1)) is None


# ---- a real JWKS server --------------------------------------------------------------------------

def test_fetches_at_start_and_finds_keys(server, sources):
    key = new_key("RS256", kid="a")
    server.serve("/jwks", key)
    src = sources(server.url("/jwks"))
    assert src.wait_first(5)
    assert src.key_for("a", "RS256", soon()).kid == "a"
    assert server.endpoints["/jwks"].hits == 1 and src.fetches == 1


def test_refreshes_in_the_background_before_max_age_expires(server, sources, clock):
    ep = server.serve("/jwks", new_key("ES256", kid="a"), max_age=100)
    src = sources(server.url("/jwks"), min_ttl_seconds=50)
    src.wait_first(5)
    clock.advance(74)
    settle()
    assert ep.hits == 1  # 0.75 of max-age=100 not reached yet
    rotated = new_key("ES256", kid="b")
    ep.body = {"keys": [rotated.jwk]}
    clock.advance(1)
    wait_for(lambda: ep.hits >= 2)
    wait_for(lambda: src.keys.find("b", "ES256") is not None)  # picked up without any token asking


def test_max_age_below_the_minimum_is_raised_to_it(server, sources, clock):
    ep = server.serve("/jwks", new_key("ES256", kid="a"), max_age=0)
    src = sources(server.url("/jwks"), min_ttl_seconds=60)
    src.wait_first(5)
    clock.advance(44)
    settle()
    assert ep.hits == 1  # refreshed at 0.75 of the 60 s minimum, not at once
    clock.advance(1)
    wait_for(lambda: ep.hits == 2)


def test_rotation_an_unknown_kid_triggers_one_refetch(server, sources):
    old, new = new_key("RS256", kid="old"), new_key("RS256", kid="new")
    ep = server.serve("/jwks", old)
    src = sources(server.url("/jwks"))
    src.wait_first(5)
    ep.body = {"keys": [old.jwk, new.jwk]}
    assert src.key_for("new", "RS256", soon(2)).kid == "new"
    assert ep.hits == 2


def test_a_flood_of_unknown_kids_makes_at_most_one_fetch_per_interval(server, sources):
    ep = server.serve("/jwks", new_key("RS256", kid="real"))
    src = sources(server.url("/jwks"), unknown_kid_interval_seconds=30)
    src.wait_first(5)
    ep.delay = 1.0  # every fetch is slow: a made-up kid that waited for one would take 0.2 s
    started = time.monotonic()

    def flood() -> None:
        for _ in range(100):
            src.key_for(uuid.uuid4().hex, "RS256", soon(0.2))

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ep.hits <= 2  # the first fetch, and at most one refetch for all 800 made-up kids
    # Not slowed down by waiting on the IdP: had each call waited, one thread alone would take 20 s.
    assert time.monotonic() - started < 10
    ep.delay = 0
    assert src.key_for("real", "RS256", soon()).kid == "real"


def test_the_interval_allows_a_new_refetch_once_it_passes(server, sources, clock):
    ep = server.serve("/jwks", new_key("RS256", kid="real"))
    src = sources(server.url("/jwks"), unknown_kid_interval_seconds=30)
    src.wait_first(5)
    assert src.key_for("x1", "RS256", soon()) is None
    assert src.key_for("x2", "RS256", soon()) is None
    assert ep.hits == 2
    clock.advance(29)
    assert src.key_for("x3", "RS256", soon()) is None
    assert ep.hits == 2
    clock.advance(1)  # exactly the interval since the last refetch
    assert src.key_for("x4", "RS256", soon()) is None
    assert ep.hits == 3


@pytest.mark.parametrize("outage", ["status", "closed", "garbage", "no usable keys"])
def test_an_outage_keeps_the_last_good_keys(server, sources, clock, outage):
    key = new_key("ES256", kid="a")
    ep = server.serve("/jwks", key, max_age=1)
    src = sources(server.url("/jwks"), min_ttl_seconds=0.2, unknown_kid_interval_seconds=0)
    src.wait_first(5)
    if outage == "status":
        ep.status = 503
    elif outage == "closed":
        server.stop()
    elif outage == "garbage":
        ep.body = {"not": "a jwks"}
    else:
        ep.body = {"keys": [{"kty": "oct", "k": "AA", "kid": "a"}]}
    before = src.fetches
    assert src.key_for("unknown", "ES256", soon(1)) is None  # forces a fetch, which fails
    wait_for(lambda: src.fetches >= before + 1)
    clock.advance(1)  # past the retry delay: the background retry fails too
    wait_for(lambda: src.fetches >= before + 2)
    assert src.key_for("a", "ES256", soon()).kid == "a"


def test_a_slow_idp_never_holds_a_check_past_its_deadline(server, sources):
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    src = sources(server.url("/jwks"), fetch_timeout_seconds=5)
    src.wait_first(5)
    ep.delay = 3
    assert src.key_for("b", "ES256", soon(0.1)) is None
    assert ep.in_flight == 1  # answered while the IdP still holds the refetch
    assert src.key_for("a", "ES256", soon(0.1)).kid == "a"  # known keys are served while the fetch hangs


def test_the_first_fetch_is_waited_for_only_until_the_deadline(server, sources):
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    ep.delay = 1.0
    src = sources(server.url("/jwks"), fetch_timeout_seconds=5)
    wait_for(lambda: ep.in_flight == 1)
    assert src.key_for("a", "ES256", soon(0.1)) is None
    assert ep.in_flight == 1  # gave up at its deadline, before the IdP answered
    assert src.key_for("a", "ES256", soon(5)).kid == "a"


def test_an_oversized_response_is_refused(server, sources):
    ep = server.serve("/jwks", *[new_key("ES256", kid=str(i)) for i in range(30)])
    src = sources(server.url("/jwks"), max_bytes=1024)
    src.wait_first(5)
    assert len(src.keys) == 0 and ep.hits == 1


def test_registry_shares_sources_by_url_and_stops_the_ones_no_longer_named(server):
    server.serve("/a", new_key("ES256", kid="a"))
    server.serve("/b", new_key("ES256", kid="b"))
    registry = JwksRegistry(settings())
    a, b = registry.source(server.url("/a")), registry.source(server.url("/b"))
    registry.wait_first([server.url("/a"), server.url("/b")], 5)
    assert registry.source(server.url("/a")) is a
    assert a.key_for("a", "ES256", soon()).kid == "a" and b.key_for("b", "ES256", soon()).kid == "b"
    registry.retain([server.url("/a")])
    assert registry.source(server.url("/b")) is not b
    b._thread.join(2)
    assert not b._thread.is_alive()
    registry.close()
    a._thread.join(2)
    assert not a._thread.is_alive()


def test_requests_name_the_service_and_ask_for_a_key_set(server, sources):
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    assert sources(server.url("/jwks")).wait_first(5)
    assert ep.request_headers[0]["user-agent"] == f"llm-authz/{__version__}"
    assert ep.request_headers[0]["accept"] == "application/jwk-set+json, application/json"


def test_a_redirect_is_not_followed(server, sources):
    target = server.serve("/jwks", new_key("ES256", kid="a"))
    server.serve("/moved", status=302, location=server.url("/jwks"))
    src = sources(server.url("/moved"))
    assert src.wait_first(5)
    assert src.key_for("a", "ES256", soon(0.1)) is None and target.hits == 0


def test_a_hung_idp_fails_the_fetch_after_the_fetch_timeout(server, sources):
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    ep.delay = 4.0
    src = sources(server.url("/jwks"), fetch_timeout_seconds=0.3)
    assert src.wait_first(3)  # tried and failed well before the IdP answers
    assert len(src.keys) == 0 and ep.in_flight == 1


def test_wait_first_returns_at_its_timeout(server, sources):
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    ep.delay = 0.6
    src = sources(server.url("/jwks"))
    assert not src.wait_first(0)  # does not wait at all, let alone until the fetch ends
    assert src.wait_first(5)


def test_a_token_without_kid_finds_the_one_key_of_its_algorithm(server, sources):
    ep = server.serve("/jwks", new_key("RS256", kid=None), new_key("ES256", kid=None))
    ep.delay = 0.3
    src = sources(server.url("/jwks"))
    assert src.key_for(None, "ES256", soon(5)).algorithms == {"ES256"}  # waited for the first fetch
    assert src.key_for(None, "ES256", soon()).algorithms == {"ES256"}
    assert src.key_for(None, "EdDSA", soon()) is None


def fetched(outcome: str, reason: str) -> float:
    return metrics.JWKS_FETCHES.labels(outcome=outcome, reason=reason)._value.get()


def test_fetches_are_counted_by_outcome_and_reason(server, sources, clock):
    for thread in threading.enumerate():  # sources closed by earlier tests finish their last fetch first
        if thread.name == "jwks-refresh":
            thread.join(10)
    before = {(o, r): fetched(o, r) for o in ("ok", "error") for r in ("initial", "refresh", "unknown_kid")}

    def added(outcome: str, reason: str) -> float:
        return fetched(outcome, reason) - before[(outcome, reason)]

    ep = server.serve("/jwks", new_key("ES256", kid="a"), max_age=100)
    src = sources(server.url("/jwks"), min_ttl_seconds=50)
    assert src.wait_first(5)
    assert added("ok", "initial") == 1
    assert src.key_for("b", "ES256", soon()) is None
    assert added("ok", "unknown_kid") == 1
    ep.status = 503
    clock.advance(75)
    wait_for(lambda: added("error", "refresh") == 1)
    assert (added("ok", "initial"), added("ok", "unknown_kid"), added("ok", "refresh")) == (1, 1, 0)


def test_failed_fetches_are_retried_with_a_doubling_delay_up_to_min_ttl(server, sources, clock):
    ep = server.serve("/jwks", new_key("ES256", kid="a"), max_age=16)
    src = sources(server.url("/jwks"), retry_seconds=2, min_ttl_seconds=8)
    assert src.wait_first(5)
    ep.status = 503
    clock.advance(12)  # the refresh at 0.75 of max-age fails
    wait_for(lambda: ep.hits == 2)
    for delay in (2, 4, 8, 8):  # retry_seconds, doubling, capped at min_ttl
        hits = ep.hits
        clock.advance(delay - 1)
        settle()
        assert ep.hits == hits, delay
        clock.advance(1)
        wait_for(lambda: ep.hits == hits + 1)
    ep.status = 200
    clock.advance(8)
    wait_for(lambda: ep.hits == 7)
    ep.status = 503  # after a success the delay starts again from retry_seconds
    clock.advance(12)
    wait_for(lambda: ep.hits == 8)
    clock.advance(1)
    settle()
    assert ep.hits == 8
    clock.advance(1)
    wait_for(lambda: ep.hits == 9)
    assert src.key_for("a", "ES256", soon()).kid == "a"  # the last good keys, all along


def test_an_unexpected_error_in_a_fetch_is_retried_and_never_stops_the_refresher(clock):
    key = new_key("ES256", kid="a")
    calls: list[int] = []

    def idp(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("surprise")
        return httpx.Response(200, json={"keys": [key.jwk]})

    client = httpx.Client(transport=httpx.MockTransport(idp))
    src = RemoteKeySource("https://idp.test/jwks", settings(retry_seconds=2), client=client, clock=clock)
    clock.sources.append(src)
    try:
        assert src.wait_first(5)
        assert len(src.keys) == 0
        clock.advance(1)
        settle()
        assert len(calls) == 1  # retried after retry_seconds, not at once
        clock.advance(1)
        wait_for(lambda: src.keys.find("a", "ES256") is not None)
    finally:
        src.close()


def test_closing_a_source_stops_its_thread_and_closes_its_connections(clock):
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"keys": []})))
    src = RemoteKeySource("https://idp.test/jwks", settings(), client=client, clock=clock)
    assert src._thread.daemon  # never keeps the process alive
    assert src.wait_first(5)
    src.close()
    src._thread.join(5)
    assert not src._thread.is_alive() and client.is_closed


def test_a_token_signed_by_a_key_rotated_in_verifies_after_one_refetch(server, sources):
    old, new = new_key("ES256", kid="old"), new_key("ES256", kid="new")
    ep = server.serve("/jwks", old)
    src = sources(server.url("/jwks"))
    assert src.wait_first(5)
    ep.body = {"keys": [old.jwk, new.jwk]}
    issuer = JwtIssuer(issuer=ISSUER, audiences=[AUDIENCE], jwks_url="https://idp.example/jwks")
    verifier = JwtVerifier([IssuerBinding("acme", issuer, src, frozenset(SUPPORTED_ALGORITHMS))])
    identity = verifier.verify(new.sign(claims()), datetime.now(timezone.utc), soon(5))
    assert (identity.tenant, identity.key_id) == ("acme", "new") and ep.hits == 2


def test_a_failed_first_fetch_is_retried_on_its_own(server):
    """With the real clock, nothing but the refresher's own timer brings the retry."""
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    ep.status = 503
    src = RemoteKeySource(server.url("/jwks"), settings(retry_seconds=0.2))
    try:
        assert src.wait_first(5) and len(src.keys) == 0
        ep.status = 200
        wait_for(lambda: src.keys.find("a", "ES256") is not None)
    finally:
        src.close()


# ---- key files and the registry's first wait ---------------------------------------------------

def _key_file_of_size(path: Path, size: int) -> Path:
    """A valid key file padded with trailing whitespace to exactly `size` bytes."""
    raw = orjson.dumps({"keys": [new_key("ES256", kid="file").jwk]})
    path.write_bytes(raw + b" " * (size - len(raw)))
    return path


def test_a_key_file_of_exactly_the_limit_loads_and_one_byte_more_is_refused(tmp_path):
    from llm_authz.identity.jwks import MAX_FILE_BYTES

    at_limit = _key_file_of_size(tmp_path / "at.json", MAX_FILE_BYTES)
    assert load_jwks_file(at_limit).find("file", "ES256") is not None
    over = _key_file_of_size(tmp_path / "over.json", MAX_FILE_BYTES + 1)
    with pytest.raises(JwksError) as info:
        load_jwks_file(over)
    assert str(info.value) == f"{over} is larger than {MAX_FILE_BYTES} bytes"


def test_a_key_file_with_one_unusable_key_is_an_error_not_a_skipped_key(tmp_path):
    path = tmp_path / "keys.json"
    path.write_bytes(orjson.dumps({"keys": [new_key("ES256", kid="good").jwk, {"kty": "oct", "k": "AA"}]}))
    with pytest.raises(JwksError):
        load_jwks_file(path)


def test_a_missing_key_file_is_named_with_the_reason_in_words(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(JwksError) as info:
        load_jwks_file(path)
    assert str(info.value) == f"cannot read {path}: No such file or directory"


@pytest.mark.parametrize("idp_delay, timeout, keys, still_fetching", [
    (0.4, 5, 1, 0),    # a slow IdP: startup waits, and has the keys when it returns
    (3.0, 0.3, 0, 1),  # a hung one: startup gives up at its timeout, the IdP still holding the fetch
])
def test_the_registry_waits_for_first_fetches_up_to_its_timeout(server, idp_delay, timeout, keys, still_fetching):
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    ep.delay = idp_delay
    registry = JwksRegistry(settings(fetch_timeout_seconds=5))
    try:
        registry.wait_first([server.url("/jwks")], timeout)
        assert (len(registry.source(server.url("/jwks")).keys), ep.in_flight) == (keys, still_fetching)
    finally:
        registry.close()


def test_a_check_with_time_left_waits_for_the_first_key_set_past_the_default_wait(server, sources):
    """A token arriving while the IdP's first answer is on its way (1 s here) is verified when the
    check's deadline leaves room, not refused after the 0.5 s a check without a deadline would wait."""
    from llm_authz.facts.request import from_check_request
    from llm_authz.identity.api_keys import ApiKeyIndex
    from llm_authz.identity.resolve import IdentityResolver
    from tests.helpers import check_request

    key = new_key("ES256", kid="late")
    ep = server.serve("/late", key)
    ep.delay = 1.0
    src = sources(server.url("/late"), fetch_timeout_seconds=10)
    issuer = JwtIssuer(issuer=ISSUER, audiences=[AUDIENCE], jwks_url="https://idp.example/jwks")
    resolver = IdentityResolver(ApiKeyIndex({}),
                                JwtVerifier([IssuerBinding("acme", issuer, src, frozenset(SUPPORTED_ALGORITHMS))]))
    facts = from_check_request(check_request(headers={"authorization": f"Bearer {key.sign(claims())}"},
                                             body={"model": "gpt-4o", "messages": []}))
    identity = resolver.resolve(facts, deadline=soon(10))
    assert identity.authenticated and identity.key_id == "late", identity


@pytest.mark.parametrize("jwk, message", [
    ({"kty": "oct", "k": "c2VjcmV0", "kid": "h"}, "key 0 (kid 'h'): kty 'oct' (a shared secret) is never accepted"),
    (lambda: {**new_key("ES256").jwk, "crv": "secp256k1"}, "key 0 (kid 'k1'): EC curve 'secp256k1' is not supported"),
    (lambda: {**new_key("EdDSA").jwk, "crv": "X25519"}, "key 0 (kid 'k1'): OKP curve 'X25519' is not supported"),
    ({"kty": "XYZ", "kid": "q"}, "key 0 (kid 'q'): kty 'XYZ' is not supported"),
    ("nope", "key 0: not a JSON object"),
])
def test_a_refused_key_file_names_the_key_and_why_exactly(jwk, message):
    """The operator reads this in `policy check` and in the reload error."""
    with pytest.raises(JwksError) as info:
        parse_jwks(orjson.dumps({"keys": [jwk() if callable(jwk) else jwk]}), strict=True)
    assert str(info.value) == message


def test_a_failed_first_fetch_is_retried_after_retry_seconds_then_doubling(server, sources, clock):
    ep = server.serve("/jwks", new_key("ES256", kid="a"))
    ep.status = 503
    src = sources(server.url("/jwks"), retry_seconds=2, min_ttl_seconds=60)
    src.wait_first(5)
    assert ep.hits == 1 and len(src.keys) == 0
    for delay in (2, 4):  # the first failure waits retry_seconds, the next twice that
        hits = ep.hits
        clock.advance(delay - 1)
        settle()
        assert ep.hits == hits, delay
        clock.advance(1)
        wait_for(lambda: ep.hits == hits + 1)


@pytest.mark.parametrize("doc, message", [
    (b"{not json", "not valid JSON"),
    (b"[]", 'a JWKS must be an object with a "keys" array'),
    (b'{"keys": []}', "no usable signature key"),
    (lambda: {"keys": [{**new_key("ES256", kid="a").jwk, "d": "AAAA"}]},
     "key 0 (kid 'a'): holds private key material: publish only public keys"),
    (lambda: {"keys": [{**new_key("ES256", kid="a").jwk, "kid": 5}]}, "key 0: kid must be a string"),
    (lambda: {"keys": [{**new_key("ES256", kid="a").jwk, "x": "!!"}]},
     "key 0 (kid 'a'): not a valid public key (InvalidKeyError)"),
    (lambda: {"keys": [{**new_key("ES256", kid="a").jwk, "kid": 5}, "nope"]},
     "key 0: kid must be a string; key 1: not a JSON object"),
])
def test_a_refused_key_set_says_exactly_why(doc, message):
    raw = orjson.dumps(doc()) if callable(doc) else doc
    with pytest.raises(JwksError) as info:
        parse_jwks(raw, strict=True)
    assert str(info.value) == message


def test_a_fetched_set_with_no_usable_key_lists_every_problem():
    with pytest.raises(JwksError) as info:
        parse_jwks(orjson.dumps({"keys": [{**new_key("ES256").jwk, "kid": 5}, "nope"]}), strict=False)
    assert str(info.value) == "no usable signature key (key 0: kid must be a string; key 1: not a JSON object)"


def test_keys_after_a_bad_or_an_encryption_key_are_still_read():
    good = new_key("ES256", kid="good")
    enc = {**new_key("ES256", kid="enc").jwk, "use": "enc"}
    ks, problems = parse_jwks(orjson.dumps({"keys": ["nope", enc, good.jwk]}), strict=False)
    assert ks.find("good", "ES256") is not None and ks.find("enc", "ES256") is None
    assert problems == ["key 0: not a JSON object"]


@pytest.mark.parametrize("key_ops, used", [
    (None, True), (["verify"], True), (["sign", "verify"], True), (["encrypt"], False), ("verify", False), ([], False),
])
def test_key_ops_must_list_verify_for_a_key_to_be_used(key_ops, used):
    jwk = new_key("ES256", kid="k").jwk
    if key_ops is not None:
        jwk = {**jwk, "key_ops": key_ops}
    other = new_key("ES256", kid="other")
    ks, _ = parse_jwks(orjson.dumps({"keys": [jwk, other.jwk]}), strict=False)
    assert (ks.find("k", "ES256") is not None) is used


def test_keys_after_a_duplicate_kid_are_still_read():
    first, again, other = new_key("ES256", kid="a"), new_key("ES256", kid="a"), new_key("ES256", kid="b")
    ks, problems = parse_jwks(orjson.dumps({"keys": [first.jwk, again.jwk, other.jwk]}), strict=False)
    assert problems == ["key 1 (kid 'a'): duplicate kid"]
    assert ks.find("b", "ES256") is not None and len(ks) == 2
