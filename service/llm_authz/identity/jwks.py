"""JSON Web Key Sets: parsed once into verification keys, from a file or from a URL kept fresh in the background.

A check never fetches keys itself. A `RemoteKeySource` owns one background thread per URL: it
fetches at start, again before the cached set expires (Cache-Control max-age, within bounds),
and on request when a token names a kid it does not know — at most once per interval, so a
flood of made-up kids cannot hammer the identity provider. A failed fetch keeps the last good
key set. A check that waits for a refetch waits only until its own deadline.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWTError

from llm_authz import __version__, metrics
from llm_authz.config import JwksSettings
from llm_authz.errors import JwksError

log = logging.getLogger("llm_authz.identity.jwks")

# Asymmetric algorithms only: a shared-secret (HS*) or unsigned ("none") token is never accepted.
SUPPORTED_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
_RSA_ALGORITHMS = frozenset(a for a in SUPPORTED_ALGORITHMS if a[:2] in ("RS", "PS"))
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
MIN_RSA_BITS = 2048
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key and the algorithms it may verify (from its type, curve and `alg`)."""

    kid: str | None
    key: Any  # a cryptography public key object
    algorithms: frozenset[str]


class KeySet:
    """An immutable set of verification keys, looked up by kid."""

    def __init__(self, keys: Sequence[VerificationKey] = ()):
        self.keys = tuple(keys)
        self._by_kid = {k.kid: k for k in self.keys if k.kid is not None}

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key a token names; without a kid, the one key that fits the algorithm (if only one does)."""
        if kid is not None:
            return self._by_kid.get(kid)
        fits = [k for k in self.keys if alg in k.algorithms]
        return fits[0] if len(fits) == 1 else None


def _key_algorithms(jwk: dict[str, Any]) -> frozenset[str]:
    kty = jwk.get("kty")
    if kty == "RSA":
        algs = _RSA_ALGORITHMS
    elif kty == "EC":
        alg = _EC_ALGORITHMS.get(jwk.get("crv", ""))
        if alg is None:
            raise JwksError(f"EC curve {jwk.get('crv')!r} is not supported")
        algs = frozenset({alg})
    elif kty == "OKP":
        if jwk.get("crv") not in _OKP_CURVES:
            raise JwksError(f"OKP curve {jwk.get('crv')!r} is not supported")
        algs = frozenset({"EdDSA"})
    else:
        raise JwksError(f"kty {kty!r} is not supported")
    declared = jwk.get("alg")
    if declared is not None:
        if declared not in algs:
            raise JwksError(f"alg {declared!r} does not fit a {kty} key or is not supported")
        algs = frozenset({declared})
    return algs


def _parse_key(jwk: Any) -> VerificationKey | None:
    """A verification key, None for a key that is not for signatures; JwksError when unusable."""
    if not isinstance(jwk, dict):
        raise JwksError("not a JSON object")
    if jwk.get("kty") == "oct":
        raise JwksError("kty 'oct' (a shared secret) is never accepted")
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise JwksError("holds private key material: publish only public keys")
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError("kid must be a string")
    algorithms = _key_algorithms(jwk)
    try:
        key = PyJWK(jwk, algorithm=next(iter(sorted(algorithms)))).key
    except (PyJWKError, PyJWTError, ValueError, TypeError) as exc:
        raise JwksError(f"not a valid public key ({type(exc).__name__})") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise JwksError(f"RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})")
    return VerificationKey(kid=kid, key=key, algorithms=algorithms)


def parse_jwks(raw: bytes | str, strict: bool = True) -> tuple[KeySet, list[str]]:
    """Parse a JWKS document. Strict: any bad key raises JwksError; else bad keys are skipped and listed."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise JwksError("not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError('a JWKS must be an object with a "keys" array')
    keys: list[VerificationKey] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, jwk in enumerate(doc["keys"]):
        label = f"key {i}" + (f" (kid {jwk['kid']!r})" if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) else "")
        try:
            parsed = _parse_key(jwk)
        except JwksError as exc:
            problems.append(f"{label}: {exc}")
            continue
        if parsed is None:
            continue
        if parsed.kid is not None:
            if parsed.kid in seen:
                problems.append(f"{label}: duplicate kid")
                continue
            seen.add(parsed.kid)
        keys.append(parsed)
    if strict and problems:
        raise JwksError("; ".join(problems))
    if not keys:
        raise JwksError("no usable signature key" + (f" ({'; '.join(problems)})" if problems else ""))
    return KeySet(keys), problems


def load_jwks_file(path: Path) -> KeySet:
    """A key set from a file, strictly: a bad key is an error for the operator, not a skipped key."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise JwksError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise JwksError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return parse_jwks(raw, strict=True)[0]


def ttl_from_cache_control(value: str | None, settings: JwksSettings) -> float:
    """Seconds the fetched set may be cached: max-age (no-cache/no-store: the minimum), within bounds."""
    ttl = settings.default_ttl_seconds
    for part in (value or "").split(","):
        name, _, arg = part.strip().partition("=")
        name = name.strip().lower()
        if name == "max-age":
            try:
                ttl = float(int(arg.strip().strip('"')))
            except ValueError:
                pass
        elif name in ("no-cache", "no-store"):
            ttl = 0.0
            break
    return min(max(ttl, settings.min_ttl_seconds), settings.max_ttl_seconds)


class KeySource(Protocol):
    def key_for(self, kid: str | None, alg: str, wait_until: float) -> VerificationKey | None:
        """The verification key a token names, or None. Never blocks past wait_until (monotonic)."""


class StaticKeySource:
    """Keys read from a `jwks_file` when tenants are loaded (and again on reload)."""

    def __init__(self, keys: KeySet):
        self.keys = keys

    @classmethod
    def from_file(cls, path: Path) -> "StaticKeySource":
        return cls(load_jwks_file(path))

    def key_for(self, kid: str | None, alg: str, wait_until: float) -> VerificationKey | None:
        return self.keys.find(kid, alg)


class RemoteKeySource:
    """Keys from a `jwks_url`, refreshed by a background thread; the last good set survives outages.

    `clock` (monotonic seconds) schedules refreshes, retries and the unknown-kid interval; a test
    passes a clock it advances, then calls `wake()`. A check's own deadline is always real time.
    """

    def __init__(self, url: str, settings: JwksSettings, client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.settings = settings
        self._clock = clock
        self._client = client or httpx.Client(
            timeout=settings.fetch_timeout_seconds, follow_redirects=False,
            headers={"user-agent": f"llm-authz/{__version__}",
                     "accept": "application/jwk-set+json, application/json"})
        self._keys = KeySet()
        self._cond = threading.Condition()
        self._pending: threading.Event | None = None  # a refetch asked for and not yet started
        self._first = threading.Event()  # the first fetch was tried (successful or not)
        self._closed = False
        self._next_refresh = 0.0
        self._last_unknown_kid_fetch = -math.inf
        self._failures = 0
        self.fetches = 0  # attempts, successful or not
        self._thread = threading.Thread(target=self._run, name="jwks-refresh", daemon=True)
        self._thread.start()

    @property
    def keys(self) -> KeySet:
        return self._keys

    def wait_first(self, timeout: float) -> bool:
        """Wait (at most timeout) for the first fetch to be tried; True once it was."""
        return self._first.wait(max(0.0, timeout))

    def key_for(self, kid: str | None, alg: str, wait_until: float) -> VerificationKey | None:
        key = self._keys.find(kid, alg)
        if key is not None:
            return key
        if not self._first.is_set():
            event: threading.Event | None = self._first
        elif kid is None:
            return None
        else:
            event = self._request_refetch()
        if event is None:
            return None
        remaining = wait_until - time.monotonic()
        if remaining > 0:
            event.wait(remaining)
        return self._keys.find(kid, alg)

    def _request_refetch(self) -> threading.Event | None:
        """The event of the refetch that will run, or None when one ran within the interval."""
        with self._cond:
            if self._closed:
                return None
            if self._pending is not None:
                return self._pending
            now = self._clock()
            if now - self._last_unknown_kid_fetch < self.settings.unknown_kid_interval_seconds:
                metrics.JWKS_REFETCHES_SUPPRESSED.inc()
                return None
            self._last_unknown_kid_fetch = now
            self._pending = threading.Event()
            self._cond.notify()
            return self._pending

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._pending is None:
                    delay = self._next_refresh - self._clock()
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                if self._closed:
                    break
                done, self._pending = self._pending, None
            reason = "unknown_kid" if done is not None else ("refresh" if self._first.is_set() else "initial")
            try:
                self._fetch(reason)
            except Exception:  # the refresher must outlive any surprise
                log.exception("JWKS refresh from %s failed unexpectedly", self.url)
                self._next_refresh = self._clock() + self.settings.retry_seconds
            self._first.set()
            if done is not None:
                done.set()
        with self._cond:
            if self._pending is not None:
                self._pending.set()
        self._first.set()
        self._client.close()

    def _fetch(self, reason: str) -> None:
        self.fetches += 1
        s = self.settings
        try:
            keys, problems, ttl = self._download()
        except (JwksError, httpx.HTTPError) as exc:
            self._failures += 1
            delay = min(s.retry_seconds * 2 ** (self._failures - 1), max(s.retry_seconds, s.min_ttl_seconds))
            self._next_refresh = self._clock() + delay
            metrics.JWKS_FETCHES.labels(outcome="error", reason=reason).inc()
            detail = str(exc) if isinstance(exc, JwksError) else type(exc).__name__
            log.warning("JWKS fetch from %s failed (%s): keeping the %d known keys, retrying in %.1fs",
                        self.url, detail, len(self._keys), delay)
            return
        if problems:
            log.warning("JWKS from %s: skipped %d unusable keys: %s", self.url, len(problems), "; ".join(problems))
        changed = {k.kid for k in keys.keys} != {k.kid for k in self._keys.keys}
        self._keys = keys
        self._failures = 0
        # Refresh before the cached set expires, so a rotation is seen without waiting for a miss.
        self._next_refresh = self._clock() + ttl * 0.75
        metrics.JWKS_FETCHES.labels(outcome="ok", reason=reason).inc()
        log.log(logging.INFO if changed else logging.DEBUG, "JWKS from %s: %d keys%s, next refresh in %.1fs",
                self.url, len(keys), " (key ids changed)" if changed else "", ttl * 0.75)

    def _download(self) -> tuple[KeySet, list[str], float]:
        s = self.settings
        give_up = time.monotonic() + 2 * s.fetch_timeout_seconds
        with self._client.stream("GET", self.url) as response:
            if response.status_code != 200:
                raise JwksError(f"HTTP status {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > s.max_bytes:
                    raise JwksError(f"response larger than {s.max_bytes} bytes")
                if time.monotonic() > give_up:
                    raise JwksError("response too slow")
            ttl = ttl_from_cache_control(response.headers.get("cache-control"), s)
        keys, problems = parse_jwks(bytes(body), strict=False)
        return keys, problems, ttl

    def wake(self) -> None:
        """Look at the clock again now (after a test clock moved)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class JwksRegistry:
    """The remote key sources of the running service, by URL; kept across reloads so caches survive."""

    def __init__(self, settings: JwksSettings | None = None):
        self.settings = settings or JwksSettings()
        self._sources: dict[str, RemoteKeySource] = {}
        self._lock = threading.Lock()

    def source(self, url: str) -> RemoteKeySource:
        with self._lock:
            found = self._sources.get(url)
            if found is None:
                found = self._sources[url] = RemoteKeySource(url, self.settings)
            return found

    def wait_first(self, urls: Iterable[str], timeout: float) -> None:
        """Give new sources up to `timeout` in all to make their first fetch, so startup has keys."""
        deadline = time.monotonic() + timeout
        for url in urls:
            self.source(url).wait_first(deadline - time.monotonic())

    def retain(self, urls: Iterable[str]) -> None:
        """Stop the sources no tenant names any more."""
        keep = set(urls)
        with self._lock:
            gone = [u for u in self._sources if u not in keep]
            closing = [self._sources.pop(u) for u in gone]
        for src in closing:
            src.close()

    def close(self) -> None:
        self.retain(())
