"""multipart/form-data → the `model` field, bounded and read so that no two readings can differ.

Frameworks disagree on forms: Starlette and Werkzeug keep the last of two parts with one name,
others the first; Werkzeug lets an RFC 2231 `name*=` parameter override a plain `name=`. A body
in which two readings could name different models is refused, and so is one with more parts than
any model API form needs (parsing 12,000 parts is work an anonymous caller could make us do).
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value

MAX_PARTS = 100
_NAME_PARAM = re.compile(r";\s*(name(?:\*\d*)?\*?)\s*=", re.IGNORECASE)


class MultipartError(ValueError):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _boundary(content_type: str) -> bytes:
    msg = Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise MultipartError("malformed_multipart", "multipart content-type without a usable boundary")
    return boundary.encode("latin-1", "replace")


def _field_name(part: Message) -> str | None:
    headers = part.get_all("content-disposition") or []
    if len(headers) > 1:
        raise MultipartError("ambiguous_field", "a multipart part with two Content-Disposition headers")
    if not headers:
        return None
    params = _NAME_PARAM.findall(str(headers[0]))
    if len(params) > 1 and not all(p.lower().startswith("name*") and p.lower() != "name*" for p in params):
        # name= beside name*= (or two name=): parsers pick different ones
        raise MultipartError("ambiguous_field", "a multipart part names its field twice (name= and name*=)")
    name = part.get_param("name", header="content-disposition")
    return collapse_rfc2231_value(name) if name is not None else None


def model_field(raw: bytes, content_type: str) -> str | None:
    """The value of the form's `model` field; None when there is none.

    Raises MultipartError when the body is malformed, has more than MAX_PARTS parts, or names a
    field ambiguously (two `model` parts, names differing only in case, name= beside name*=).
    """
    boundary = _boundary(content_type)
    if raw.count(b"--" + boundary) > MAX_PARTS + 1:
        raise MultipartError("too_many_parts", f"a multipart body with more than {MAX_PARTS} parts")
    message = BytesParser(policy=compat32).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise MultipartError("malformed_multipart", "multipart body without parts")
    parts = message.get_payload()
    if not isinstance(parts, list) or len(parts) > MAX_PARTS:
        raise MultipartError("too_many_parts", f"a multipart body with more than {MAX_PARTS} parts")
    found: list[str] = []
    for part in parts:
        name = _field_name(part)
        if name is not None and name.strip().casefold() == "model":
            value = part.get_payload(decode=True) or b""
            found.append(value.decode("utf-8", "replace").strip())
    if len(found) > 1:
        raise MultipartError("duplicate_field", "the form has more than one model field")
    return found[0] if found else None
