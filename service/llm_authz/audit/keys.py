"""Ed25519 keys for audit checkpoints: load, generate, and name them by a short key id.

The service holds the private key (`serve --audit-signing-key FILE`, PKCS#8 PEM); auditors hold
the public key (SubjectPublicKeyInfo PEM) and pass it to `audit verify --public-key`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from llm_authz.errors import AuditKeyError

log = logging.getLogger("llm_authz.audit")


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key, from an unencrypted PKCS#8 PEM file. Warns when others can read it."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise AuditKeyError(f"{path}: cannot read the audit signing key: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise AuditKeyError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{path}: the audit signing key must be Ed25519, not {type(key).__name__}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: the audit signing key is readable by other users (mode %o)", path, mode & 0o777)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A verification key, from a PEM public key (or the PEM private key, whose public half is used)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"{path}: cannot read the public key: {exc.strerror}") from exc
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            key = private.public_key() if isinstance(private, Ed25519PrivateKey) else private
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise AuditKeyError(f"{path}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path}: not an Ed25519 key")
    return key


def generate(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private key mode 0600, never overwritten); returns its key id."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AuditKeyError(f"{private_path}: exists; not overwriting a key") from None
    except OSError as exc:
        raise AuditKeyError(f"{private_path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return key_id(key.public_key())
