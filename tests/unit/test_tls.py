"""TLS files: a pair that does not fit is refused, and a rotation half done keeps the pair in force."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_authz.config import Config
from llm_authz.errors import ConfigError
from llm_authz.tls import ReloadingServerCredentials, TlsConfigError, TlsFiles, read_pair
from tests.identity_fixtures import Pki


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, _ = pki.issue("a", dns="x", server=True)
    _, other_key = pki.issue("b", dns="x", server=True)
    with pytest.raises(TlsConfigError, match="is not the key of the certificate"):
        read_pair(TlsFiles(cert, other_key))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsConfigError):
        read_pair(TlsFiles(tmp_path / "junk.pem", other_key))


def test_cert_and_key_go_together_and_a_client_ca_needs_them() -> None:
    with pytest.raises(ValueError, match="go together"):
        Config(tls_cert=Path("c.pem"))
    with pytest.raises(ValueError, match="needs tls_cert"):
        Config(tls_client_ca=Path("ca.pem"))
    assert isinstance(TlsConfigError("x"), ConfigError)  # `serve` reports it and exits 1


def test_a_half_done_rotation_keeps_the_pair_in_force_until_the_files_fit_again(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.issue("a", dns="x", server=True)
    credentials = ReloadingServerCredentials(TlsFiles(cert, key))
    assert credentials._fetch() is None  # unchanged
    new_cert, new_key = pki.issue("b", dns="x", server=True)
    cert.write_bytes(new_cert.read_bytes())  # the certificate first, the key not yet
    assert credentials._fetch() is None
    assert credentials._fetch() is None  # the same refused files are not read again
    key.write_bytes(new_key.read_bytes())
    assert credentials._fetch() is not None
    assert credentials._fetch() is None
