"""Route families: which model and which operation a request path names.

One table, one regular expression per family. A path that matches no family names no model
operation, and the policy answers 403 `route_not_allowed` (least privilege).

Inference routes take POST. The read-only routes SDKs call at start-up (list the models, read one
model's metadata or readiness, the server's health) take GET and carry no body; their operations
are READ_OPERATIONS, which the default policy grants to the `models:read` scope.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class Route:
    family: str          # openai | anthropic | kserve | tfserving | gemini
    operation: str       # one of tenants.OPERATIONS, or of READ_OPERATIONS (GET routes)
    model: str | None    # from the path; None when the model is in the body
    version: str | None
    stream: bool = False  # the route itself streams (Gemini's streamGenerateContent)
    body_format: str = "json"  # json | multipart | none (read-only routes: any body is ignored)

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


def match_route(method: str, path: str, headers: Mapping[str, str] | None = None) -> Route | None:
    """The route `method` on `path` names, or None (also for a model or version part that does not
    validate: see _segment). Inference routes take POST, read-only routes GET; `headers` tell
    apart the APIs that share a read-only path (`GET /v1/models` is OpenAI's, Anthropic's and
    Gemini v1's listing alike)."""
    try:
        return _match(method, path, headers or {})
    except _BadSegment:
        return None


def _match(method: str, path: str, headers: Mapping[str, str]) -> Route | None:
    path = path.rstrip("/") if len(path) > 1 else path
    if method == "GET":
        return match_read_route(path, headers)
    if method != "POST":
        return None
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


# ---- read-only routes (GET, no body) ------------------------------------------------------------

LIST_MODELS = "list_models"
MODEL_METADATA = "model_metadata"
SERVER_METADATA = "server_metadata"
READ_OPERATIONS = frozenset({LIST_MODELS, MODEL_METADATA, SERVER_METADATA})
READ_SCOPE = "models:read"  # what the default policy asks of a credential for READ_OPERATIONS
# Sent by every Anthropic SDK request / by Google's SDKs (the API key header, the client header).
ANTHROPIC_HEADER = "anthropic-version"
GOOGLE_HEADERS = ("x-goog-api-key", "x-goog-api-client")

_V1_MODEL = re.compile(rf"^/v1/models/(?P<m>{_SEG})$")
_GEMINI_MODEL = re.compile(rf"^/v1beta/models/(?P<m>{_SEG})$")
_TFSERVING_METADATA = re.compile(
    rf"^/v1/models/(?P<m>{_SEG})(?:(?:/versions/(?P<v>{_SEG})|/labels/(?P<l>{_SEG}))(?:/metadata)?|/metadata)$"
)
_KSERVE_MODEL = re.compile(rf"^/v2/models/(?P<m>{_SEG})(?:/versions/(?P<v>{_SEG}))?(?:/ready)?$")
_KSERVE_SERVER = frozenset({"/v2", "/v2/health/live", "/v2/health/ready"})


def _v1_family(headers: Mapping[str, str]) -> str:
    """Who is calling a `/v1/models` path: Anthropic and Google SDKs say so in a header."""
    if ANTHROPIC_HEADER in headers:
        return "anthropic"
    if any(h in headers for h in GOOGLE_HEADERS):
        return "gemini"
    return "openai"


def _read(family: str, operation: str, model: str | None = None, version: str | None = None) -> Route:
    return Route(family, operation, _segment(model), _segment(version), body_format="none")


def match_read_route(path: str, headers: Mapping[str, str]) -> Route | None:
    """The read-only route a GET to `path` names, or None. Raises _BadSegment like _match."""
    if path == "/v1/models":
        return _read(_v1_family(headers), LIST_MODELS)
    if path == "/v1beta/models":
        return _read("gemini", LIST_MODELS)
    if m := _V1_MODEL.match(path):
        # TF Serving's model status is this same path: it is read as the caller's API says.
        return _read(_v1_family(headers), MODEL_METADATA, m["m"])
    if m := _GEMINI_MODEL.match(path):
        return _read("gemini", MODEL_METADATA, m["m"])
    if m := _TFSERVING_METADATA.match(path):
        return _read("tfserving", MODEL_METADATA, m["m"], m["v"] or m["l"])
    if m := _KSERVE_MODEL.match(path):
        return _read("kserve", MODEL_METADATA, m["m"], m["v"])
    if path in _KSERVE_SERVER:
        return _read("kserve", SERVER_METADATA)
    return None


_V1_VERB = re.compile(r"^/v1/models/[^/]+:\w+$")


def api_family(route: Route | None, path: str, headers: Mapping[str, str]) -> str:
    """The API a request speaks, which picks the shape of its error body: the route's family, or,
    for a path that names no route, the best reading of its path and headers."""
    if route is not None:
        return route.family
    if ANTHROPIC_HEADER in headers or path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path.startswith("/v1beta/") or any(h in headers for h in GOOGLE_HEADERS):
        return "gemini"
    if path == "/v2" or path.startswith("/v2/"):
        return "kserve"
    if _V1_VERB.match(path):
        return "tfserving"  # /v1/models/<name>:<verb> without a Google header: TF Serving's shape
    return "openai"
