"""URLs as logs may show them: a bundle or collector URL can carry a credential (user:password@,
a presigned query string), and no credential reaches a log."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def loggable_url(url: str) -> str:
    """The URL without user info, query or fragment; a path that is not a URL is kept as it is."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
