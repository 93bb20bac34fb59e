"""TLS on the gRPC port, with certificates read again when their files change.

cert-manager (or the kubelet, for a Secret volume) replaces the certificate files while the
service runs. gRPC asks for the server's certificate configuration before each new TLS
handshake; this answers with the files' current contents when they changed and form a valid
pair, and keeps the pair in force otherwise, so a half-written rotation never breaks handshakes.
With a client CA, a client must present a certificate that CA signed (mTLS): Envoy's
`UpstreamTlsContext` client certificate.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from llm_authz import metrics
from llm_authz.errors import ConfigError

log = logging.getLogger("llm_authz.tls")


class TlsConfigError(ConfigError):
    """The certificate, key or CA files cannot be used."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is rewritten or a symlink swapped (the kubelet's `..data`)."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def read_pair(files: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
    """The PEM bytes of certificate chain, key and client CA; TlsConfigError if they do not fit."""
    try:
        cert_pem = files.cert.read_bytes()
        key_pem = files.key.read_bytes()
        ca_pem = files.client_ca.read_bytes() if files.client_ca else None
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS files: {exc}") from exc
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
        if ca_pem is not None:
            x509.load_pem_x509_certificates(ca_pem)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(f"TLS files are not PEM certificates and an unencrypted key: {exc}") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, public)
            != key.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise TlsConfigError(f"{files.key} is not the key of the certificate in {files.cert}")
    return cert_pem, key_pem, ca_pem


class ReloadingServerCredentials:
    """gRPC server credentials whose certificate configuration follows the files."""

    def __init__(self, files: TlsFiles):
        self.files = files
        self._lock = threading.Lock()
        self._stamp = _stamp(files.paths())
        self._refused: tuple[tuple[int, int, int], ...] | None = None
        self._initial = self._configuration(*read_pair(files))

    @staticmethod
    def _configuration(cert: bytes, key: bytes, ca: bytes | None) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=self.files.client_ca is not None)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before a handshake: a new configuration, or None to keep the current one."""
        with self._lock:
            try:
                stamp = _stamp(self.files.paths())
            except OSError:
                return None  # a file missing for a moment during a swap: keep the pair in force
            if stamp in (self._stamp, self._refused):
                return None
            try:
                configuration = self._configuration(*read_pair(self.files))
            except TlsConfigError as exc:
                # Mid-rotation (a key that does not match yet) or a broken file: the pair in force
                # stays; the files are tried again once they change again.
                self._refused = stamp
                metrics.TLS_RELOADS.labels(outcome="error").inc()
                log.error("TLS files changed but cannot be used, keeping the certificate in force: %s", exc)
                return None
            self._stamp = stamp
        metrics.TLS_RELOADS.labels(outcome="ok").inc()
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return configuration


__all__ = ["ReloadingServerCredentials", "TlsConfigError", "TlsFiles", "read_pair"]
