"""A benchmark's tenants and policies: copies of the example ones, plus a JWT issuer whose RSA key is
made at bench start (the private key never leaves the temp directory)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from workload import DEMO_API_KEY

REPO = Path(__file__).resolve().parents[1]
ISSUER = "https://idp.bench.example"
AUDIENCE = "llm-api"
KID = "bench-1"


@dataclass
class Fixtures:
    root: Path
    tenants: Path
    policies: Path
    api_key: str
    jwt_token: str


def make(root: Path, source: Path = REPO) -> Fixtures:
    """Tenants and policies (from the tree at `source`) under root; acme trusts the bench issuer."""
    tenants = root / "tenants"
    policies = root / "policies"
    shutil.copytree(source / "tenants", tenants)
    shutil.copytree(source / "policies" / "rego", policies)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
    (tenants / "keys").mkdir(exist_ok=True)
    (tenants / "keys" / "bench.jwks.json").write_text(json.dumps({"keys": [jwk]}))
    acme_path = tenants / "acme.yaml"
    acme = yaml.safe_load(acme_path.read_text())
    acme.setdefault("credentials", {}).setdefault("jwt", []).append(
        {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": "keys/bench.jwks.json"})
    # Quotas stay on (their counting is part of every check) but high enough that every
    # benchmark request is allowed: a bench of 429s would measure the deny path.
    acme.setdefault("limits", {}).update({"requests_per_minute": 10**9, "tokens_per_minute": 10**12})
    acme_path.write_text(yaml.safe_dump(acme, sort_keys=False))
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-client", "iat": now, "nbf": now - 5, "exp": now + 4 * 3600,
         "scope": "inference:invoke"},
        key, algorithm="RS256", headers={"kid": KID})
    return Fixtures(root=root, tenants=tenants, policies=policies, api_key=DEMO_API_KEY, jwt_token=token)
