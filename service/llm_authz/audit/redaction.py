"""What of an input document may be written to the audit log: no prompt text, no credential."""

from __future__ import annotations

import copy
from typing import Any

REDACTED = "[redacted]"
# Places in the input document that can hold prompt text or raw body bytes.
PROMPT_POINTERS = ("/parsed_body", "/attributes/request/http/body", "/attributes/request/http/rawBody")


def _remove(doc: Any, pointer: str) -> bool:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
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


def redact_input(doc: dict[str, Any], masks: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """A copy of the input safe to log, and the JSON pointers that were masked."""
    out = copy.copy(doc)
    out["attributes"] = copy.deepcopy(doc.get("attributes", {}))
    masked = []
    if out.get("parsed_body") is not None:
        out["parsed_body"] = REDACTED
        masked.append("/parsed_body")
    for pointer in PROMPT_POINTERS[1:]:
        if _remove(out, pointer):
            masked.append(pointer)
    if masks:
        out = copy.deepcopy(out)
        for pointer in masks:
            if _remove(out, pointer):
                masked.append(pointer)
    return out, masked
