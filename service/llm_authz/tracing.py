"""The W3C trace context of a request: its trace id, for the audit record and the log lines.

Only a `traceparent` header of the form W3C Trace Context defines is read
(`version-traceid-parentid-flags`, lower-case hex); anything else gives no trace id rather
than a made-up one, so a record's `trace_id` always points at the trace the caller started.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

TRACEPARENT = "traceparent"
# version 00-fe (ff is invalid); trace id 32 hex; parent id 16 hex; flags 2 hex. Version 00 ends
# there; a later version may append `-...` fields, which are ignored.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$", re.DOTALL)
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The 32-hex trace id of a valid `traceparent` header, else None."""
    value = headers.get(TRACEPARENT)
    if not value or len(value) > 512:
        return None
    match = _TRACEPARENT.match(value.strip(" \t"))
    if match is None:
        return None
    version, trace, parent, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return None
    return trace


__all__ = ["TRACEPARENT", "trace_id"]
