"""Make a decision record writable whatever the request held.

The body parser already refuses lone surrogates and integers beyond 64 bits, but a record must
never be lost to a value the log cannot hold (a check without a record is a probe that leaves no
trace). So when the log refuses a record, the check replaces each such value, names where it
did in the record's `unencodable` list, and writes that.
"""

from __future__ import annotations

import math
from typing import Any

INT_MIN, UINT64_MAX = -(2**63), 2**64 - 1
REPLACED_FIELD = "unencodable"


def _pointer_part(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _string(value: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def _fix(value: Any, pointer: str, replaced: list[str]) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            replaced.append(pointer)
            return _string(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if INT_MIN <= value <= UINT64_MAX:
            return value
        replaced.append(pointer)
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        replaced.append(pointer)
        return str(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k if isinstance(k, str) else str(k)
            safe_key = _fix(key, pointer + "/" + _pointer_part(key), replaced)
            out[safe_key] = _fix(v, pointer + "/" + _pointer_part(safe_key), replaced)
        return out
    if isinstance(value, (list, tuple)):
        return [_fix(v, f"{pointer}/{i}", replaced) for i, v in enumerate(value)]
    replaced.append(pointer)
    return repr(value)[:200].encode("utf-8", "replace").decode("utf-8")


def make_encodable(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of the record that JSON can hold: strings with lone surrogates get U+FFFD in their
    place, integers beyond 64 bits and non-finite floats become strings, other values their
    repr. The JSON pointers of every replaced value are listed under `unencodable`."""
    replaced: list[str] = []
    out = _fix(record, "", replaced)
    out[REPLACED_FIELD] = replaced
    return out
