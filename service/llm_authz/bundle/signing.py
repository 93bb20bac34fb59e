"""OPA's bundle signatures: the per-file digests and the JWT in `.signatures.json`.

The rules, as OPA applies them (bundle/hash.go, sign.go, verify.go):

- `.signatures.json` is `{"signatures": ["<JWT>"]}`, exactly one JWT, whose payload holds
  `files: [{name, hash, algorithm}]` (plus optional `keyid`, `scope`, `iat`, `iss`).
- Every file of the bundle except `.signatures.json` must be listed, and every listed file must
  be in the bundle.
- A structured file (`data.json`, `data.yaml`, `.manifest`) is hashed over its parsed value:
  objects as `{` key `:` value ... `}` with keys sorted, arrays as `[` ... `]`, commas between
  items, strings and numbers as Go's encoding/json writes them (numbers keep their literal
  text). Any other file (`.rego`, `data.yml`, ...) is hashed over its bytes.
- The JWT is verified with the configured public key; its `scope` must equal the configured
  scope (none here). HMAC and unsigned tokens are refused.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from llm_authz.errors import BundleError, BundleSignatureError

SIGNATURES_FILE = ".signatures.json"
STRUCTURED_NAMES = frozenset({"data.json", "data.yaml", ".manifest", "signatures.json"})
HASHES = {"MD5": hashlib.md5, "SHA-1": hashlib.sha1, "SHA-224": hashlib.sha224, "SHA-256": hashlib.sha256,
          "SHA-384": hashlib.sha384, "SHA-512": hashlib.sha512,
          "SHA-512-224": lambda: hashlib.new("sha512_224"), "SHA-512-256": lambda: hashlib.new("sha512_256")}
# Only these are accepted: a weak digest could let a changed file keep its listed hash.
ACCEPTED_HASHES = frozenset({"SHA-256", "SHA-384", "SHA-512", "SHA-512-224", "SHA-512-256"})
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class _Number(str):
    """A JSON number, kept as its literal text (Go's json.Number): its digest uses the text as written."""


def is_structured(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in STRUCTURED_NAMES


def _go_string(value: str) -> bytes:
    """A string as Go's encoding/json writes it with HTML escaping off."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":  # Go 1.22+ (every OPA release since 0.62)
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif code < 0x20 or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate is not valid UTF-8: Go writes U+FFFD
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out).encode("utf-8")


def _walk(value: Any, out: list[bytes]) -> None:
    if isinstance(value, dict):
        out.append(b"{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(b",")
            out.append(_go_string(key))
            out.append(b":")
            _walk(value[key], out)
        out.append(b"}")
    elif isinstance(value, list):
        out.append(b"[")
        for i, item in enumerate(value):
            if i:
                out.append(b",")
            _walk(item, out)
        out.append(b"]")
    elif isinstance(value, _Number):
        out.append(str.__str__(value).encode())
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif value is True:
        out.append(b"true")
    elif value is False:
        out.append(b"false")
    elif value is None:
        out.append(b"null")
    elif isinstance(value, int):
        out.append(str(value).encode())
    elif isinstance(value, float):
        out.append(_go_float(value))
    else:
        raise BundleError(f"cannot hash a value of type {type(value).__name__}")


def _go_float(value: float) -> bytes:
    """A float64 as Go's encoding/json writes it: shortest digits, positional within [1e-6, 1e21)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise BundleError("NaN and infinities are not JSON")
    if value == 0 or 1e-6 <= abs(value) < 1e21:
        text = format(Decimal(repr(value)), "f")
        return (text.rstrip("0").rstrip(".") if "." in text else text).encode()
    mantissa, _, exp = repr(value).partition("e")
    sign, digits = exp[0], exp[1:].lstrip("0") or "0"
    return f"{mantissa}e{sign}{digits if sign == '-' and len(digits) == 1 else digits.zfill(2)}".encode()


def parse_structured(name: str, raw: bytes) -> Any:
    """A structured file's value for hashing: numbers keep their literal text."""
    try:
        if name.endswith(".yaml"):
            return yaml.safe_load(raw.decode("utf-8"))
        return json.loads(raw.decode("utf-8"), parse_int=_Number, parse_float=_Number,
                          parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BundleError(f"{name}: not valid {'YAML' if name.endswith('.yaml') else 'JSON'}: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def file_digest(name: str, raw: bytes, algorithm: str = "SHA-256") -> str:
    """The hex digest OPA lists for a bundle file."""
    factory = HASHES.get(algorithm)
    if factory is None:
        raise BundleSignatureError(f"{name}: unsupported hashing algorithm {algorithm!r}")
    h = factory()
    if is_structured(name):
        parts: list[bytes] = []
        _walk(parse_structured(name, raw), parts)
        for part in parts:
            h.update(part)
    else:
        h.update(raw)
    return h.hexdigest()


def value_digest(value: Any, algorithm: str = "SHA-256") -> str:
    """The digest of an already parsed structured value (what `policy build` writes)."""
    h = HASHES[algorithm]()
    parts: list[bytes] = []
    _walk(value, parts)
    for part in parts:
        h.update(part)
    return h.hexdigest()


# ---- keys -----------------------------------------------------------------------------------

def load_public_key(path: Path) -> Any:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise BundleError(f"{path}: bundle signatures use RSA or ECDSA keys (as OPA does)")
    return key


def load_private_key(path: Path) -> Any:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise BundleError(f"{path}: bundle signatures use RSA or ECDSA keys (as OPA does)")
    return key


def algorithms_for(key: Any) -> tuple[str, ...]:
    """The JWT algorithms a key can verify (or sign) with."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return RSA_ALGS
    alg = EC_ALGS.get(key.curve.name)
    if alg is None:
        raise BundleError(f"unsupported elliptic curve {key.curve.name}")
    return (alg,)


# ---- sign and verify ------------------------------------------------------------------------

@dataclass(frozen=True)
class FileInfo:
    name: str
    hash: str
    algorithm: str = "SHA-256"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "hash": self.hash, "algorithm": self.algorithm}


def sign(files: Iterable[FileInfo], private_key: Any, key_id: str | None = None) -> bytes:
    """The `.signatures.json` bytes for these files (OPA's default signer: RS256 for RSA keys)."""
    alg = algorithms_for(private_key)[0]
    payload: dict[str, Any] = {"files": [f.as_dict() for f in files]}
    headers: dict[str, Any] = {}
    if key_id:
        payload["keyid"] = key_id
        headers["kid"] = key_id
    token = jwt.encode(payload, private_key, algorithm=alg, headers=headers or None)
    return json.dumps({"signatures": [token]}, indent=1).encode()


def verify(signatures_raw: bytes, files: Mapping[str, bytes], public_key: Any) -> None:
    """Check `.signatures.json` against the key and every other file of the bundle.

    Raises BundleSignatureError naming what does not match.
    """
    try:
        doc = json.loads(signatures_raw)
    except ValueError as exc:
        raise BundleSignatureError(f"{SIGNATURES_FILE}: not JSON: {exc}") from None
    tokens = doc.get("signatures") if isinstance(doc, dict) else None
    if not isinstance(tokens, list) or not tokens:
        raise BundleSignatureError(f"{SIGNATURES_FILE}: missing JWT (expected exactly one)")
    if len(tokens) > 1:
        raise BundleSignatureError(f"{SIGNATURES_FILE}: multiple JWTs not supported (expected exactly one)")
    if not isinstance(tokens[0], str):
        raise BundleSignatureError(f"{SIGNATURES_FILE}: the signature is not a JWT")
    try:
        payload = jwt.decode(tokens[0], public_key, algorithms=list(algorithms_for(public_key)),
                             options={"verify_aud": False, "verify_iat": False, "verify_exp": False,
                                      "verify_nbf": False, "verify_iss": False, "require": []})
    except jwt.PyJWTError as exc:
        raise BundleSignatureError(f"{SIGNATURES_FILE}: the signature does not verify with the "
                                   f"bundle public key ({type(exc).__name__})") from None
    if payload.get("scope", "") != "":
        raise BundleSignatureError(f"{SIGNATURES_FILE}: scope mismatch")
    listed = payload.get("files")
    if not isinstance(listed, list):
        raise BundleSignatureError(f"{SIGNATURES_FILE}: the signed payload lists no files")
    expected: dict[str, dict[str, Any]] = {}
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BundleSignatureError(f"{SIGNATURES_FILE}: a listed file has no name")
        expected[entry["name"]] = entry
    for name, raw in sorted(files.items()):
        entry = expected.pop(name, None)
        if entry is None:
            raise BundleSignatureError(f"file {name} not included in bundle signature")
        algorithm = entry.get("algorithm")
        if not algorithm:
            raise BundleSignatureError(f"no hashing algorithm provided for file {name}")
        if algorithm not in ACCEPTED_HASHES:
            raise BundleSignatureError(f"{name}: hashing algorithm {algorithm!r} is not accepted")
        if file_digest(name, raw, algorithm) != str(entry.get("hash", "")).lower():
            raise BundleSignatureError(f"{name}: digest mismatch")
    if expected:
        raise BundleSignatureError(f"file(s) {sorted(expected)} specified in bundle signatures "
                                   "but not found in the target bundle")
