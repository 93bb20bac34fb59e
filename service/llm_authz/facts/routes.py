"""Route families: which model and which operation a request path names.

One table, one regular expression per family. A path that matches no family names no model
operation, and the policy answers 403 `route_not_allowed` (least privilege).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class Route:
    family: str          # openai | anthropic | kserve | tfserving | gemini
    operation: str       # one of tenants.OPERATIONS
    model: str | None    # from the path; None when the model is in the body
    version: str | None
    stream: bool = False  # the route itself streams (Gemini's streamGenerateContent)
    body_format: str = "json"  # json | multipart | any

    @property
    def model_source(self) -> str:
        return "path" if self.model is not None else "body"


_SEG = r"[^/:]+"
_OPENAI_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/images/generations": "images",
    "/v1/moderations": "moderations",
    "/v1/audio/speech": "audio",
}
_OPENAI_MULTIPART = {
    "/v1/audio/transcriptions": "audio",
    "/v1/audio/translations": "audio",
    "/v1/images/edits": "images",
    "/v1/images/variations": "images",
}
_KSERVE = re.compile(rf"^/v2/models/(?P<m>{_SEG})(?:/versions/(?P<v>{_SEG}))?/infer$")
_TFSERVING = re.compile(
    rf"^/v1/models/(?P<m>{_SEG})(?:/versions/(?P<v>{_SEG})|/labels/(?P<l>{_SEG}))?:(?P<verb>predict|classify|regress)$"
)
_GEMINI = re.compile(rf"^/v1(?:beta)?/models/(?P<m>{_SEG}):(?P<verb>generateContent|streamGenerateContent)$")


class _BadSegment(ValueError):
    """A path part that would not name the same thing to every server behind Envoy."""


def _segment(raw: str | None) -> str | None:
    """A model name, version or label from the path, percent-decoded once and validated.

    Refused: bytes that are not UTF-8, '.' and '..', separators ('/', '\\', ':'), control
    characters, and a '%' left after decoding (double encoding: a server that decodes again
    would see another path).
    """
    if raw is None:
        return None
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise _BadSegment(raw) from None
    if value in (".", "..") or any(c in _FORBIDDEN or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _BadSegment(raw)
    return value


_FORBIDDEN = frozenset("/\\:%?#")


def match_route(method: str, path: str) -> Route | None:
    """The route a POST to `path` names, or None (also for a model or version part that does not
    validate: see _segment). Inference routes take POST only."""
    try:
        return _match(method, path)
    except _BadSegment:
        return None


def _match(method: str, path: str) -> Route | None:
    if method != "POST":
        return None
    path = path.rstrip("/") if len(path) > 1 else path
    if path in _OPENAI_PATHS:
        return Route("openai", _OPENAI_PATHS[path], None, None)
    if path in _OPENAI_MULTIPART:
        return Route("openai", _OPENAI_MULTIPART[path], None, None, body_format="multipart")
    if path == "/v1/messages":
        return Route("anthropic", "chat", None, None)
    if m := _KSERVE.match(path):
        return Route("kserve", "infer", _segment(m["m"]), _segment(m["v"]))
    if m := _TFSERVING.match(path):
        return Route("tfserving", "predict", _segment(m["m"]), _segment(m["v"] or m["l"]))
    if m := _GEMINI.match(path):
        return Route("gemini", "generate", _segment(m["m"]), None,
                     stream=m["verb"] == "streamGenerateContent")
    return None
