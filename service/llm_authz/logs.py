"""Log lines: one JSON object per event for log collectors, or text for a terminal.

A JSON line carries `time`, `level`, `logger`, `message`, and whatever the event adds through
`extra=` (`decision_id`, `trace_id`, `request_id` on the check path; `revision`, `outcome` on a
reload), so an operator can go from a log line to the audit record that has the same
`decision_id`. Never a credential, never a prompt: callers pass identifiers only.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def default_format() -> LogFormat:
    """JSON unless a person is reading stderr on a terminal."""
    try:
        return "text" if sys.stderr.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def json_formatter() -> logging.Formatter:
    return JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"})


def configure(level: str = "info", fmt: LogFormat | None = None) -> None:
    """Send the process's log records to stderr in `fmt` (replacing any earlier setup)."""
    handler = logging.StreamHandler(sys.stderr)
    if (fmt or default_format()) == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per JWKS fetch or OPA call


__all__ = ["configure", "default_format", "json_formatter"]
