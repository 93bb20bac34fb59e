"""Where `serve --bundle` gets its bundle: a file or directory (read at start and on reload), or a URL.

A URL is downloaded at start and then polled every `poll_seconds` (±20 % jitter, so replicas do
not poll in step) with `If-None-Match: <ETag of the bundle in force>`. A 304 changes nothing. A
new bundle is verified and compiled before it replaces the one in force; if downloading,
verifying or compiling fails, the revision in force keeps deciding, the failure is logged and
counted, and the next poll tries again.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from llm_authz import metrics
from llm_authz.bundle.format import DEFAULT_MAX_BYTES, Bundle, read_bundle, read_bundle_bytes
from llm_authz.bundle.signing import load_public_key
from llm_authz.errors import BundleError
from llm_authz.urls import loggable_url

log = logging.getLogger("llm_authz.bundle")
JITTER = 0.2


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class BundleSource:
    def __init__(self, location: str, public_key: Path | None = None, poll_seconds: float = 30.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = 10.0):
        self.location = location
        self.public_key: Any = load_public_key(public_key) if public_key is not None else None
        self.poll_seconds = poll_seconds
        self.max_bytes = max_bytes
        self.etag: str | None = None  # of the bundle in force
        self._client = httpx.Client(timeout=timeout, follow_redirects=True) if is_url(location) else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def remote(self) -> bool:
        return self._client is not None

    def read(self) -> tuple[Bundle, str | None]:
        """The bundle as it is now and its ETag (a URL is downloaded unconditionally). Raises BundleError."""
        if self._client is None:
            return read_bundle(Path(self.location), self.public_key, self.max_bytes), None
        downloaded = self.download(conditional=False)
        assert downloaded is not None
        return read_bundle_bytes(downloaded[0], self.public_key, self.max_bytes), downloaded[1]

    def download(self, conditional: bool = True) -> tuple[bytes, str | None] | None:
        """The bundle's bytes and ETag, or None when the server says it is unchanged."""
        assert self._client is not None
        headers = {"accept": "application/gzip, application/octet-stream"}
        if conditional and self.etag:
            headers["if-none-match"] = self.etag
        try:
            with self._client.stream("GET", self.location, headers=headers) as response:
                if response.status_code == 304:
                    metrics.BUNDLE_DOWNLOADS.labels(outcome="not_modified").inc()
                    return None
                if response.status_code != 200:
                    raise BundleError(f"bundle server answered {response.status_code}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise BundleError(f"bundle download larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
                etag = response.headers.get("etag")
        except httpx.HTTPError as exc:
            metrics.BUNDLE_DOWNLOADS.labels(outcome="error").inc()
            raise BundleError(f"bundle download from {loggable_url(self.location)} failed: {type(exc).__name__}") from None
        except BundleError:
            metrics.BUNDLE_DOWNLOADS.labels(outcome="error").inc()
            raise
        metrics.BUNDLE_DOWNLOADS.labels(outcome="ok").inc()
        return b"".join(chunks), etag

    def next_delay(self) -> float:
        return self.poll_seconds * random.uniform(1 - JITTER, 1 + JITTER)

    def start_polling(self, activate: Callable[[Bundle], bool]) -> None:
        """Poll a URL in a thread; `activate(bundle)` puts a new bundle in force (False: refused)."""
        if self._client is None or self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(self.next_delay()):
                self.poll_once(activate)

        self._thread = threading.Thread(target=run, name="bundle-poller", daemon=True)
        self._thread.start()

    def poll_once(self, activate: Callable[[Bundle], bool]) -> bool:
        """One conditional download; True when a new bundle was put in force."""
        try:
            downloaded = self.download()
        except BundleError as exc:
            log.error("bundle %s not downloaded, keeping the revision in force: %s", loggable_url(self.location), exc)
            return False
        if downloaded is None:
            return False
        raw, etag = downloaded
        try:
            bundle = read_bundle_bytes(raw, self.public_key, self.max_bytes)
        except BundleError as exc:
            log.error("bundle %s refused, keeping the revision in force: %s", loggable_url(self.location), exc)
            metrics.POLICY_RELOADS.labels(outcome="error").inc()
            return False
        if activate(bundle):
            self.etag = etag
            return True
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._client is not None:
            self._client.close()
