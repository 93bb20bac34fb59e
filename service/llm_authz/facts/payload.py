"""Body → PayloadFacts: size, parsed JSON, stream, max_tokens, messages, prompt size, tools, images.

Hostile bodies are answered, never raised: every problem becomes `error` (a short code) and
`error_detail`, and the policy turns it into 400 `bad_request`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from llm_authz.facts.fields import INT64_MAX, FieldError, folded, get_field, output_token_limit
from llm_authz.facts.multipart import MultipartError, model_field
from llm_authz.facts.request import RequestFacts
from llm_authz.facts.routes import Route

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
# JSON integers outside what a 64-bit field holds (signed or unsigned) are refused: no upstream
# field takes them, and they could not be written to the audit log or handed to the engine.
_INT_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


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
    """One JSON object. Two keys that differ only in case are duplicates: Go's encoding/json reads
    `Model` as `model` (the last one wins), Python servers read the exact key."""
    obj = dict(pairs)
    if len(pairs) > 1 and len({k.casefold() for k in obj}) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k.casefold() in seen or seen.add(k.casefold()))  # type: ignore[func-returns-value]
        raise _BodyError("duplicate_key", f"duplicate JSON key {_shown(dup)!r} (keys differing only in case count as one)")
    for key in obj:
        if _has_lone_surrogate(key):
            raise _BodyError("invalid_unicode", "a JSON key holds a lone surrogate escape")
    return obj


def _shown(text: str) -> str:
    """Text from the body, safe to put in an error message (and so in the audit log)."""
    return text[:64].encode("utf-8", "replace").decode("utf-8")


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _int(text: str) -> int:
    if len(text) > 21:
        raise _BodyError("number_out_of_range", "integer beyond the 64-bit range")
    value = int(text)
    if not _INT_MIN <= value <= _UINT64_MAX:
        raise _BodyError("number_out_of_range", "integer beyond the 64-bit range")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BodyError("number_out_of_range", "number out of the double range")
    return value


def _constant(name: str) -> Any:
    raise _BodyError("malformed_json", f"{name} is not JSON")


_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_int=_int, parse_float=_float,
                                   parse_constant=_constant)


def parse_json_strict(raw: bytes, max_depth: int) -> Any:
    """JSON as RFC 8259 says and a little stricter: UTF-8 only, no duplicate keys, finite numbers."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BodyError("invalid_utf8", f"body is not UTF-8 at byte {exc.start}") from None
    # Reject deep nesting before the recursive parser sees it: with no more brackets than the limit
    # in the whole text no value can be nested deeper, else the scan outside strings measures it.
    bracket_heavy = text.count("[") + text.count("{") > max_depth
    if bracket_heavy and not _shallow(text, max_depth):
        raise _BodyError("too_deep", f"JSON nested deeper than {max_depth}")
    try:
        if text.startswith("\ufeff"):
            json.loads(text)  # raises json's own "Unexpected UTF-8 BOM" (the decoder alone does not)
        value = _STRICT_DECODER.decode(text)
    except _BodyError:
        raise
    except (ValueError, RecursionError) as exc:
        raise _BodyError("malformed_json", f"invalid JSON: {str(exc)[:120]}") from None
    if "\\u" in text and _strings_have_lone_surrogate(value):
        raise _BodyError("invalid_unicode", "a JSON string holds a lone surrogate escape")
    return value


def _strings_have_lone_surrogate(value: Any) -> bool:
    """A `\\ud800` escape with no partner decodes to a string that is not Unicode: upstreams differ on
    it and it cannot be logged. Only run when the text has an escape at all."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _has_lone_surrogate(node):
                return True
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


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
                kind = get_field(part, "type")
                text = get_field(part, "text")
                if isinstance(text, str):
                    chars += len(text)
                if kind in ("image_url", "image", "input_image") or get_field(part, "image_url") is not None:
                    image = True
                for key in ("inline_data", "inlinedata"):
                    inline = get_field(part, key)
                    if isinstance(inline, dict):
                        mime = get_field(inline, "mime_type") or get_field(inline, "mimetype") or ""
                        image = image or str(mime).lower().startswith("image/")
    return chars, image


def _add_role(roles: list[str], role: Any) -> None:
    if isinstance(role, str) and role[:32] not in roles:
        roles.append(role[:32])


def _conversation_facts(body: dict[str, Any], facts: PayloadFacts) -> None:
    roles: list[str] = []
    chars = 0
    images = False
    messages = body.get("messages")
    if isinstance(messages, list):  # OpenAI chat, Anthropic messages
        facts.messages = len(messages)
        for msg in messages:
            if isinstance(msg, dict):
                _add_role(roles, get_field(msg, "role"))
                c, i = _text_chars(get_field(msg, "content"))
                chars += c
                images = images or i
    contents = body.get("contents")
    if isinstance(contents, list):  # Gemini
        facts.messages += len(contents)
        for item in contents:
            if isinstance(item, dict):
                role = get_field(item, "role")
                _add_role(roles, "user" if role is None else role)
                c, i = _text_chars(get_field(item, "parts"))
                chars += c
                images = images or i
    # completions, embeddings, responses, Anthropic system, Gemini system instruction
    for key in ("prompt", "input", "system", "instructions", "systeminstruction", "system_instruction"):
        value = body.get(key)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, dict):
            c, i = _text_chars(get_field(value, "parts"))
            chars += c
            images = images or i
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    chars += len(item)
                elif isinstance(item, dict):
                    content = get_field(item, "content")
                    c, i = _text_chars([item] if content is None else content)
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
            fn = get_field(tool, "function")
            name = get_field(fn, "name") if isinstance(fn, dict) else get_field(tool, "name") or get_field(tool, "type")
            if isinstance(name, str):
                names.append(name[:128])
            for key in ("functiondeclarations", "function_declarations"):
                decls = get_field(tool, key)
                for decl in decls if isinstance(decls, list) else []:
                    if isinstance(decl, dict) and isinstance(get_field(decl, "name"), str):
                        names.append(get_field(decl, "name")[:128])
    return names


def _declared_length(facts: RequestFacts) -> int | None:
    """content-length when it is a plain decimal number (not '²', not '+5', not 30 digits)."""
    declared = facts.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and len(declared) < 16:
        return int(declared)
    return None


# Envoy's ext_authz `with_request_body.max_request_bytes` (config `envoy_max_request_bytes`). A
# body of no declared length that fills it may have been cut there: Envoy's partial-body flag says
# "false" when its buffer is exactly full, so the flag alone cannot be trusted. 0: not known.
envoy_max_request_bytes = 1024 * 1024


def body_cut_short(facts: RequestFacts) -> bool:
    """Envoy sent part of the body: it says so, content-length is more than arrived (OPA-Envoy's
    `truncated_body`), or no length was declared and the body fills Envoy's buffer (it may have
    been cut there: never read in the caller's favour)."""
    if facts.headers.get(PARTIAL_BODY_HEADER, "").strip().lower() == "true":
        return True
    declared = _declared_length(facts)
    if declared is None:
        return 0 < envoy_max_request_bytes <= len(facts.body)
    return len(facts.body) < declared


def is_json_media_type(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _fill_any_json(out: PayloadFacts, raw: bytes, media_type: str, max_depth: int) -> None:
    """A route that names no model operation: its JSON body is parsed for OPA-Envoy's
    `input.parsed_body`, by the same strict reader; no model facts are read from it."""
    if not raw or out.truncated or not is_json_media_type(media_type):
        return
    out.body = parse_json_strict(raw, max_depth)
    out.parsed = True


def extract_payload(facts: RequestFacts, route: Route | None, max_depth: int = 64) -> PayloadFacts:
    """Read the body's facts. Problems are recorded in `error`; nothing here raises."""
    content_type = facts.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    declared = _declared_length(facts)
    truncated = body_cut_short(facts)
    size = max(declared or 0, len(facts.body))
    if truncated and declared is None:
        size += 1  # cut short with no length given: it had at least one byte more than we saw
    out = PayloadFacts(bytes=size, content_type=media_type, truncated=truncated)
    try:
        _fill(out, facts, route, media_type, content_type, max_depth)
    except (_BodyError, FieldError, MultipartError) as exc:
        out.error, out.error_detail = exc.code, exc.detail
    except Exception as exc:  # a parser surprise must still answer 400, never crash the check
        out.error, out.error_detail = "malformed_body", type(exc).__name__
    return out


def unread_payload(facts: RequestFacts, why: str) -> PayloadFacts:
    """Facts of a body that was deliberately not read: its size only, and an error so that no
    policy can allow on facts nobody looked at."""
    content_type = facts.headers.get("content-type", "")
    return PayloadFacts(bytes=max(_declared_length(facts) or 0, len(facts.body)),
                        content_type=content_type.split(";", 1)[0].strip().lower(),
                        error="body_not_read", error_detail=why)


def _fill(out: PayloadFacts, facts: RequestFacts, route: Route | None, media_type: str,
          content_type: str, max_depth: int) -> None:
    raw = facts.body
    if route is None or route.body_format == "none":
        if not body_cut_short(facts):
            _fill_any_json(out, raw, media_type, max_depth)
        return
    if route.body_format == "multipart":
        if media_type != "multipart/form-data":
            raise _BodyError("unsupported_content_type", "this route takes multipart/form-data")
        if out.truncated:
            return  # the model field may be past the cut: the policy answers 413
        out.model = model_field(raw, content_type)
    else:
        if not raw:
            if route.model_source == "body":
                raise _BodyError("missing_body", "this route needs a JSON body naming the model")
            return
        if media_type not in ("application/json", "") and not media_type.endswith("+json"):
            raise _BodyError("unsupported_content_type", f"expected application/json, got {_shown(media_type)!r}")
        if out.truncated:
            return  # a cut JSON body cannot be parsed: the policy answers 413 (see docs/payload-fields.md)
        body = parse_json_strict(raw, max_depth)
        out.parsed = True
        out.body = body
        if not isinstance(body, dict):
            if route.model_source == "body":
                raise _BodyError("invalid_field", "the body must be a JSON object")
            return
        top = folded(body)
        model = top.get("model")
        if model is not None and not isinstance(model, str):
            raise _BodyError("invalid_field", "model must be a string")
        out.model = model
        stream = top.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise _BodyError("invalid_field", "stream must be true or false")
        out.stream = stream or route.stream
        out.max_tokens = output_token_limit(body)
        _conversation_facts(top, out)
        out.tools = _tool_names(top)
    out.stream = out.stream or route.stream
    out.estimated_tokens = min((out.prompt_chars + 3) // 4 + (out.max_tokens or 0), INT64_MAX)
    if route.model_source == "body" and not out.model and not out.truncated:
        raise _BodyError("missing_model", "the body names no model")
    if route.model is not None and out.model and out.model != route.model:
        raise _BodyError("model_mismatch", "the model in the path and the model in the body differ")
