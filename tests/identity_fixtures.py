"""Keys, tokens, certificates and a JWKS server, all made by the tests (nothing private is committed)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.acme.test"
AUDIENCE = "llm-api"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    """A private key made in the test, its kid and algorithm; `jwk` is the public half."""

    private: Any
    kid: str | None
    alg: str

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        algo = {"RS": RSAAlgorithm, "PS": RSAAlgorithm, "ES": ECAlgorithm, "Ed": OKPAlgorithm}[self.alg[:2]]
        out = algo.to_jwk(public, as_dict=True)
        if self.kid is not None:
            out["kid"] = self.kid
        out["use"] = "sig"
        return out

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        h = {"kid": self.kid} if self.kid is not None else {}
        h.update(headers or {})
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=h)


def new_key(alg: str = "RS256", kid: str | None = "k1") -> SigningKey:
    if alg[:2] in ("RS", "PS"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif alg == "ES512":
        private = ec.generate_private_key(ec.SECP521R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    return SigningKey(private, kid, alg)


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.jwk for k in keys]}


def write_jwks(path: Path, *keys: SigningKey) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jwks_of(*keys)))
    return path


def claims(iss: str = ISSUER, aud: Any = AUDIENCE, sub: str = "user-123", lifetime: int = 300,
           scope: str | None = "inference:invoke", now: float | None = None, **extra: Any) -> dict[str, Any]:
    t = int(now if now is not None else time.time())
    out: dict[str, Any] = {"iss": iss, "aud": aud, "sub": sub, "iat": t, "exp": t + lifetime}
    if scope is not None:
        out["scope"] = scope
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def unsigned_token(payload: dict[str, Any], kid: str | None = "k1", alg: str = "none") -> str:
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}."


def hmac_token(payload: dict[str, Any], secret: bytes, kid: str | None = "k1", alg: str = "HS256") -> str:
    """A token MACed with `secret` — e.g. the issuer's public key PEM (the key-confusion attack)."""
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), digest).digest())}"


def signature_of(token: str) -> str:
    return token.rsplit(".", 1)[1]


# ---- a JWKS endpoint ---------------------------------------------------------------------------

@dataclass
class Endpoint:
    """What one path of the JWKS server answers, and how often it was asked."""

    body: dict[str, Any]
    max_age: int | None = 300
    status: int = 200
    delay: float = 0.0
    hits: int = 0
    in_flight: int = 0  # requests received and not yet answered (held by `delay`)
    location: str | None = None  # with a 3xx status: where it redirects to
    pieces: int = 1  # the body is written in this many parts, flushed apart (the client reads several chunks)
    request_headers: list[dict[str, str]] = field(default_factory=list)


@dataclass
class JwksServer:
    """A real HTTP server on 127.0.0.1 serving JWKS documents, in a thread of the test process."""

    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    def start(self) -> "JwksServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                ep = owner.endpoints.get(self.path)
                if ep is None:
                    self.send_error(404)
                    return
                ep.hits += 1
                ep.request_headers.append({k.lower(): v for k, v in self.headers.items()})
                ep.in_flight += 1
                try:
                    if ep.delay:
                        time.sleep(ep.delay)
                finally:
                    ep.in_flight -= 1
                body = json.dumps(ep.body).encode() if ep.status == 200 else b'{"error": "down"}'
                self.send_response(ep.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if ep.location is not None:
                    self.send_header("location", ep.location)
                if ep.max_age is not None:
                    self.send_header("cache-control", f"public, max-age={ep.max_age}")
                self.end_headers()
                step = -(-len(body) // ep.pieces)
                for start in range(0, len(body), step):
                    self.wfile.write(body[start:start + step])
                    self.wfile.flush()
                    if ep.pieces > 1:
                        time.sleep(0.005)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def serve(self, path: str, *keys: SigningKey, **kw: Any) -> Endpoint:
        ep = self.endpoints[path] = Endpoint(jwks_of(*keys), **kw)
        return ep

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# ---- certificates for mTLS ---------------------------------------------------------------------

@dataclass
class Pki:
    """A CA and the certificates it issued, written as PEM files in `directory`."""

    directory: Path
    ca_key: Any = None
    ca_cert: Any = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-authz test CA")])
        now = dt.datetime.now(dt.timezone.utc)
        self.ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path = self.directory / "ca.pem"
        self.ca_path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, uri: str | None = None, dns: str | None = None, ip: str | None = None,
              server: bool = False) -> tuple[Path, Path]:
        """A leaf certificate and key (paths), with a URI SAN (SPIFFE ID), a DNS and/or an IP SAN."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        sans: list[x509.GeneralName] = []
        if uri:
            sans.append(x509.UniformResourceIdentifier(uri))
        if dns:
            sans.append(x509.DNSName(dns))
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path
