"""Body → PayloadFacts: size, parsed JSON, stream, max_tokens, messages, prompt size, tools, images.

Hostile bodies are answered, never raised: every problem becomes `error` (a short code) and
`error_detail`, and the policy turns it into 400 `bad_request`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from llm_authz.facts.request import RequestFacts
from llm_authz.facts.routes import Route

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
_MAX_INT_DIGITS = 20  # beyond 64-bit range: a token count or a size that big is an attack, not a request
_MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(slots=True)
class PayloadFacts:
    bytes: int = 0
    content_type: str = ""
    parsed: bool = False
    truncated: bool = False
    stream: bool = False
    max_tokens: int | None = None
    messages: int = 0
    roles: list[str] = field(default_factory=list)
    prompt_chars: int = 0
    estimated_tokens: int = 0
    tools: list[str] = field(default_factory=list)
    has_images: bool = False
    model: str | None = None
    body: Any = None  # the parsed JSON (OPA-Envoy's parsed_body); never written to the audit log
    error: str | None = None
    error_detail: str | None = None


class _BodyError(ValueError):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _BodyError("duplicate_key", f"duplicate JSON key {dup[:64]!r}")
    return obj


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _BodyError("number_out_of_range", "integer with more than 20 digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BodyError("number_out_of_range", "number out of the double range")
    return value


def _constant(name: str) -> Any:
    raise _BodyError("malformed_json", f"{name} is not JSON")


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return True


def parse_json_strict(raw: bytes, max_depth: int) -> Any:
    """JSON as RFC 8259 says and a little stricter: UTF-8 only, no duplicate keys, finite numbers."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BodyError("invalid_utf8", f"body is not UTF-8 at byte {exc.start}") from None
    # Reject deep nesting before the recursive parser sees it.
    if text.count("[") + text.count("{") > max_depth and not _shallow(text, max_depth):
        raise _BodyError("too_deep", f"JSON nested deeper than {max_depth}")
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_int=_int,
                           parse_float=_float, parse_constant=_constant)
    except _BodyError:
        raise
    except (ValueError, RecursionError) as exc:
        raise _BodyError("malformed_json", f"invalid JSON: {str(exc)[:120]}") from None
    if not _depth_ok(value, max_depth):
        raise _BodyError("too_deep", f"JSON nested deeper than {max_depth}")
    return value


def _shallow(text: str, limit: int) -> bool:
    """Bracket depth outside strings stays within limit (a scan only run for bracket-heavy bodies)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _text_chars(content: Any) -> tuple[int, bool]:
    """Characters of text in an OpenAI/Anthropic/Gemini content value, and whether it holds an image."""
    if isinstance(content, str):
        return len(content), False
    chars, image = 0, False
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                chars += len(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if isinstance(part.get("text"), str):
                    chars += len(part["text"])
                if kind in ("image_url", "image", "input_image") or "image_url" in part:
                    image = True
                inline = part.get("inline_data") or part.get("inlineData")
                if isinstance(inline, dict) and str(inline.get("mime_type") or inline.get("mimeType", "")).startswith("image/"):
                    image = True
    return chars, image


def _conversation_facts(body: dict[str, Any], facts: PayloadFacts) -> None:
    roles: list[str] = []
    chars = 0
    images = False
    messages = body.get("messages")
    if isinstance(messages, list):  # OpenAI chat, Anthropic messages
        facts.messages = len(messages)
        for msg in messages:
            if isinstance(msg, dict):
                role = msg.get("role")
                if isinstance(role, str) and role not in roles:
                    roles.append(role[:32])
                c, i = _text_chars(msg.get("content"))
                chars += c
                images = images or i
    contents = body.get("contents")
    if isinstance(contents, list):  # Gemini
        facts.messages += len(contents)
        for item in contents:
            if isinstance(item, dict):
                role = item.get("role", "user")
                if isinstance(role, str) and role not in roles:
                    roles.append(role[:32])
                c, i = _text_chars(item.get("parts"))
                chars += c
                images = images or i
    for key in ("prompt", "input", "system", "instructions"):  # completions, embeddings, responses, Anthropic system
        value = body.get(key)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    chars += len(item)
                elif isinstance(item, dict):
                    c, i = _text_chars(item.get("content", [item]))
                    chars += c
                    images = images or i
    facts.roles = roles
    facts.prompt_chars = chars
    facts.has_images = images or body.get("image") is not None


def _tool_names(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools")
    names: list[str] = []
    if isinstance(tools, list):
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            fn = tool.get("function")
            name = fn.get("name") if isinstance(fn, dict) else tool.get("name") or tool.get("type")
            if isinstance(name, str):
                names.append(name[:128])
            for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
                if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                    names.append(decl["name"][:128])
    return names


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in _MAX_TOKEN_KEYS:
        if key in body and body[key] is not None:
            return _count(body[key], key)
    config = body.get("generationConfig") or body.get("generation_config")
    if isinstance(config, dict):
        for key in ("maxOutputTokens", "max_output_tokens"):
            if config.get(key) is not None:
                return _count(config[key], key)
    return None


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _BodyError("invalid_field", f"{key} must be a non-negative integer")
    return value


def _multipart_model(raw: bytes, content_type: str) -> str | None:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise _BodyError("malformed_multipart", "multipart body without parts")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "model":
            value = part.get_payload(decode=True) or b""
            return value.decode("utf-8", "replace").strip()
    return None


def extract_payload(facts: RequestFacts, route: Route | None, max_depth: int = 64) -> PayloadFacts:
    """Read the body's facts. Problems are recorded in `error`; nothing here raises."""
    content_type = facts.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    declared = facts.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() and len(declared) < 16 else len(facts.body)
    out = PayloadFacts(
        bytes=max(size, len(facts.body)),
        content_type=media_type,
        truncated=facts.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true"
        or (declared.isdigit() and len(declared) < 16 and len(facts.body) < int(declared) and route is not None),
    )
    try:
        _fill(out, facts, route, media_type, content_type, max_depth)
    except _BodyError as exc:
        out.error, out.error_detail = exc.code, exc.detail
    except Exception as exc:  # a parser surprise must still answer 400, never crash the check
        out.error, out.error_detail = "malformed_body", type(exc).__name__
    return out


def _fill(out: PayloadFacts, facts: RequestFacts, route: Route | None, media_type: str,
          content_type: str, max_depth: int) -> None:
    raw = facts.body
    if route is None:
        return
    if route.body_format == "multipart":
        if media_type != "multipart/form-data":
            raise _BodyError("unsupported_content_type", "this route takes multipart/form-data")
        if out.truncated:
            return  # the model field may be past the cut: the policy answers 413
        out.model = _multipart_model(raw, content_type)
    else:
        if not raw:
            if route.model_source == "body":
                raise _BodyError("missing_body", "this route needs a JSON body naming the model")
            return
        if media_type not in ("application/json", "") and not media_type.endswith("+json"):
            raise _BodyError("unsupported_content_type", f"expected application/json, got {media_type[:64]!r}")
        if out.truncated:
            return  # a cut JSON body cannot be parsed; 413 if the model is in it
        body = parse_json_strict(raw, max_depth)
        out.parsed = True
        out.body = body
        if not isinstance(body, dict):
            if route.model_source == "body":
                raise _BodyError("invalid_field", "the body must be a JSON object")
            return
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _BodyError("invalid_field", "model must be a string")
        out.model = model
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _BodyError("invalid_field", "stream must be true or false")
        out.stream = stream or route.stream
        out.max_tokens = _max_tokens(body)
        _conversation_facts(body, out)
        out.tools = _tool_names(body)
    out.stream = out.stream or route.stream
    out.estimated_tokens = (out.prompt_chars + 3) // 4 + (out.max_tokens or 0)
    if route.model_source == "body" and not out.model and not out.truncated:
        raise _BodyError("missing_model", "the body names no model")
    if route.model is not None and out.model and out.model != route.model:
        raise _BodyError("model_mismatch", "the model in the path and the model in the body differ")
