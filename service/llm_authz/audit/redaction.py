"""What of an input document may be written to the audit log: no prompt text, no credential.

Credential headers are already "[redacted]" when the input is built (facts/request.py). Here the
body goes (parsed and raw), then the operator's extra masks: JSON pointers (RFC 6901) into the
input, as OPA's `system.log.mask` takes them (a leading `/input` is accepted and dropped). A masked
value is replaced by "[redacted]" and its pointer is listed in the record's `masked`.
"""

from __future__ import annotations

import copy
from typing import Any

from llm_authz.facts.request import is_credential_header, redact_credential

REDACTED = "[redacted]"
# Places in the input document that can hold prompt text or raw body bytes.
PROMPT_POINTERS = ("/parsed_body", "/attributes/request/http/body", "/attributes/request/http/rawBody")
# A header is in the input twice: a mask on one copy masks the other too.
_HEADER_COPIES = ("/request/headers/", "/attributes/request/http/headers/")


class MaskError(ValueError):
    """A mask is not a JSON pointer into the input."""


def parse_pointer(pointer: str) -> list[str]:
    """The reference tokens of an RFC 6901 pointer. Raises MaskError when it is not one."""
    if not isinstance(pointer, str) or not pointer.startswith("/") or pointer == "/":
        raise MaskError(f"{pointer!r}: a mask is a JSON pointer such as /request/headers/x-user-email")
    tokens = pointer[1:].split("/")
    for token in tokens:
        rest = token.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise MaskError(f"{pointer!r}: '~' must be written ~0 (and '/' as ~1)")
        if not token:
            raise MaskError(f"{pointer!r}: empty segment")
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def normalize_masks(masks: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validated masks, `/input` prefix dropped, header copies added; raises MaskError."""
    out: list[str] = []
    for mask in masks:
        parse_pointer(mask)
        if mask == "/input":
            raise MaskError("'/input' would mask the whole input: name the fields to mask")
        if mask.startswith("/input/"):
            mask = mask[len("/input"):]
        variants = [mask]
        for i, prefix in enumerate(_HEADER_COPIES):
            if mask.startswith(prefix):
                variants.append(_HEADER_COPIES[1 - i] + mask[len(prefix):])
        out.extend(v for v in variants if v not in out)
    return tuple(out)


def _mask(doc: Any, pointer: str) -> bool:
    parts = parse_pointer(pointer)
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    last = parts[-1]
    if isinstance(node, dict) and last in node:
        node[last] = REDACTED
        return True
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = REDACTED
        return True
    return False


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _redact_credentials(doc: dict[str, Any]) -> list[str]:
    """Replace raw credential headers (in a copied document) as the default input shows them."""
    masked = []
    for prefix, path in (("/request/headers/", ("request", "headers")),
                         ("/attributes/request/http/headers/", ("attributes", "request", "http", "headers"))):
        node: Any = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        for name, value in node.items():
            if is_credential_header(name) and isinstance(value, str):
                node[name] = redact_credential(name, value)
                masked.append(prefix + _escape(name))
    return masked


def credential_values(doc: dict[str, Any]) -> list[str]:
    """The raw credential strings in an input built with raw_credentials (tokens, passwords, keys)."""
    values = []
    headers = doc.get("request", {}).get("headers", {})
    for name, value in (headers.items() if isinstance(headers, dict) else ()):
        if is_credential_header(name) and isinstance(value, str) and value:
            values.append(value)
            scheme, sep, rest = value.partition(" ")
            if sep and rest.strip():
                values.append(rest.strip())
    return [v for v in values if len(v) >= 4]


def scrub_credentials(result: Any, doc: dict[str, Any]) -> Any:
    """The policy result with any raw credential it echoes (a header built from the token, say)
    replaced by "[redacted]": the audit log never stores a credential."""
    secrets = credential_values(doc)
    if not secrets or result is None:
        return result

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for secret in secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        return value

    return scrub(result)


def redact_input(doc: dict[str, Any], masks: tuple[str, ...] = (),
                 raw_credentials: bool = False) -> tuple[dict[str, Any], list[str]]:
    """A copy of the input safe to log, and the JSON pointers that were masked.

    `masks` must have been through normalize_masks (the config does it once, at load). With
    `raw_credentials` the input holds credential headers as the client sent them: they are
    redacted here (as `Bearer [redacted]`) and listed in `masked`, so replay knows a policy that
    reads them cannot be reproduced from the log.
    """
    out = copy.copy(doc)
    out["attributes"] = _copy_http_path(doc.get("attributes", {}))
    masked = []
    if out.get("parsed_body") is not None:
        out["parsed_body"] = REDACTED
        masked.append("/parsed_body")
    for pointer in PROMPT_POINTERS[1:]:
        if _mask(out, pointer):
            masked.append(pointer)
    if masks or raw_credentials:
        out = copy.deepcopy(out)
        if raw_credentials:
            masked.extend(_redact_credentials(out))
        for pointer in masks:
            if pointer not in masked and _mask(out, pointer):
                masked.append(pointer)
    return out, masked


def _copy_http_path(attributes: Any) -> Any:
    """`attributes` with the dicts down to request.http copied (where the body pointers write), the
    rest shared: a deep copy of it all was a sixth of a check's CPU. Extra masks deep-copy anyway."""
    if not isinstance(attributes, dict):
        return copy.deepcopy(attributes)
    out = dict(attributes)
    request = out.get("request")
    if isinstance(request, dict):
        out["request"] = request = dict(request)
        http = request.get("http")
        if isinstance(http, dict):
            request["http"] = dict(http)
    return out
