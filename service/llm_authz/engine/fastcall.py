"""One OPA evaluation with as little Python around the Go call as possible.

`OpaEngine.eval_document` of opa-golib-python-bindings 0.4.4 encodes the input with
`json.dumps` and decodes the answer with `json.loads`; on a check those two cost more than
the Go evaluation of a small policy. This module makes the same native call
(`OpaEvalDocument`, no coverage, no trace) with orjson on both sides and otherwise keeps the
bindings' behaviour: the engine's lock, the same errors (OpaError with the Go side's code and
message, OpaUndefinedError), `print()` output handled by the bindings.

Where orjson would not give exactly what json gives, the bindings' own encoder and json are
used instead:
- encoding: integers beyond 64 bits, lone surrogates, non-string keys make orjson refuse; the
  bindings' `_dumps` then does what it always did (encode, or raise OpaError). Non-finite
  floats are the one case orjson writes differently (null, where json writes NaN and the Go
  side refuses it): the documents llm-authz builds cannot hold them (the body parser refuses
  them, orjson-read input files cannot hold them).
- decoding: orjson reads integers beyond 64 bits as floats, so an answer with a run of 19 or
  more digits is read by json, as is anything orjson refuses.

It relies on the bindings' internals (`_lib`, `_handle`, `_eval_lock`, `_eval_result`,
`_cstr`, `_dumps`), so it is used only with the version it was written for; any other
version takes the public `eval_document`. tests/unit/test_engine_fastcall.py holds it to the
bindings' answers, and the conformance cases run through it.
"""

from __future__ import annotations

import ctypes
import json
import re
from functools import lru_cache
from importlib import metadata
from typing import Any

import orjson
from opa_bindings import OpaEngine, OpaError, OpaUndefinedError
from opa_bindings import engine as _bindings

BINDINGS_VERSION = "0.4.4"
_LONG_NUMBER = re.compile(rb"\d{19,}")


def available() -> bool:
    """The installed bindings are the version this module mirrors."""
    try:
        version = metadata.version("opa-golib-python-bindings")
    except metadata.PackageNotFoundError:
        return False
    return version == BINDINGS_VERSION and all(
        hasattr(_bindings, name) for name in ("_cstr", "_dumps")
    ) and hasattr(OpaEngine, "_eval_result")


@lru_cache(maxsize=256)
def _path_bytes(path: str) -> bytes:
    return _bindings._cstr(path)


def encode_input(value: Any) -> bytes:
    """The input as the Go side reads it: b"" for no input, else UTF-8 JSON."""
    if value is None:
        return b""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _bindings._dumps(value)


def decode(raw: bytes) -> Any:
    if _LONG_NUMBER.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def eval_document(engine: OpaEngine, path: str, input: Any) -> Any:  # noqa: A002 - Rego's word
    """The value of `data.<path>`, as `engine.eval_document(path, input)` returns it."""
    cpath = _path_bytes(path)
    payload = encode_input(input)
    lib = engine._lib
    with engine._eval_lock:
        handle = engine._handle
        if handle is None:
            raise OpaError("closed", "engine has been closed")
        ptr = lib.OpaEvalDocument(handle, cpath, payload, 0, 0)
        if not ptr:
            raise OpaError("internal", "native call returned NULL")
        try:
            raw = ctypes.string_at(ptr)
        finally:
            lib.OpaFreeString(ptr)
        envelope = decode(raw)
        error = envelope.get("error")
        if error is not None:
            raise OpaError(error.get("code", "unknown"), error.get("message", ""))
        if envelope.get("prints"):
            engine._eval_result(envelope)  # the bindings' print handling
        results = envelope.get("result")
    if not results or not results[0].get("expressions"):
        raise OpaUndefinedError(f"data.{path}" if path else "data")
    return results[0]["expressions"][0]["value"]
