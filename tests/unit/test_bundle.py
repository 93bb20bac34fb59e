"""OPA bundles: `policy build` output, reading, roots, signatures (OPA's rules), hostile archives."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_authz.bundle import read_bundle, read_bundle_bytes
from llm_authz.bundle import signing
from llm_authz.bundle.build import archive, build
from llm_authz.engine.embedded import EmbeddedEngine
from llm_authz.errors import BundleError, BundleSignatureError
from llm_authz.policy import load_bundle_source
from tests.conftest import REPO

POLICY = 'package app.rbac\n\nallow if input.user == data.app.admins[_]\n'


def _keys(tmp: Path, kind: str = "rsa") -> tuple[Path, Path]:
    private = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp / f"{kind}.pem", tmp / f"{kind}.pub.pem"
    priv.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _policy_dir(tmp: Path) -> Path:
    root = tmp / "src"
    (root / "app").mkdir(parents=True)
    (root / "app" / "rbac.rego").write_text(POLICY)
    (root / "app" / "data.json").write_text('{"admins": ["alice"]}')
    return root


def _files(raw: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        return {m.name.lstrip("/"): tar.extractfile(m).read() for m in tar if m.isfile()}


def test_built_bundle_is_opas_layout_and_evaluates(tmp_path):
    out = tmp_path / "b.tar.gz"
    manifest = build([_policy_dir(tmp_path)], out, revision="v1")
    files = _files(out.read_bytes())
    assert set(files) == {".manifest", "data.json", "app/rbac.rego"}
    assert json.loads(files[".manifest"]) == {"revision": "v1", "roots": ["app"], "rego_version": 1} == manifest
    assert json.loads(files["data.json"]) == {"app": {"admins": ["alice"]}}
    bundle = read_bundle(out)
    engine = EmbeddedEngine(bundle.modules, bundle.data)
    try:
        assert engine.evaluate("data.app.rbac.allow", {"user": "alice"}) is True
    finally:
        engine.close()


def test_build_is_reproducible(tmp_path):
    src = _policy_dir(tmp_path)
    build([src], tmp_path / "a.tar.gz")
    build([src], tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_default_policy_and_tenants_bundle_builds_the_revision_serve_builds(tmp_path):
    out = tmp_path / "b.tar.gz"
    build([REPO / "policies" / "rego"], out, tenants_dir=REPO / "tenants", revision="r")
    bundle = read_bundle(out)
    assert bundle.data["tenants"]["acme"]["credentials"]["api_keys"][0]["sha256"]  # key hashes travel
    source, tenants = load_bundle_source(bundle, tmp_path / "none", "data.llm.authz.decision", tmp_path / "files")
    assert sorted(tenants) == ["acme", "hobbyist", "research"]
    assert "sha256" not in source.data["tenants"]["acme"]["credentials"]["api_keys"][0]  # as from files
    assert tenants["acme"].resolve("keys/acme.jwks.json").is_file()  # jwks_file travels in the bundle


def test_signed_bundle_verifies_and_tampering_is_refused(tmp_path):
    priv, pub = _keys(tmp_path)
    out = tmp_path / "b.tar.gz"
    build([_policy_dir(tmp_path)], out, revision="v1", signing_key=priv)
    key = signing.load_public_key(pub)
    assert read_bundle(out, key).signed
    files = _files(out.read_bytes())
    token = json.loads(files[".signatures.json"])["signatures"][0]
    listed = {f["name"] for f in orjson.loads(_b64(token.split(".")[1]))["files"]}
    assert listed == {".manifest", "data.json", "app/rbac.rego"}

    tampered = {**files, "data.json": b'{"app": {"admins": ["mallory"]}}'}
    with pytest.raises(BundleSignatureError, match="data.json: digest mismatch"):
        read_bundle_bytes(archive(tampered), key)
    added = {**files, "app/extra.rego": b"package app.extra\n"}
    with pytest.raises(BundleSignatureError, match="not included in bundle signature"):
        read_bundle_bytes(archive(added), key)
    removed = {k: v for k, v in files.items() if k != "app/rbac.rego"}
    with pytest.raises(BundleSignatureError, match="not found in the target bundle"):
        read_bundle_bytes(archive(removed), key)
    # Reformatting JSON does not change its digest (OPA hashes the parsed value).
    spaced = {**files, "data.json": b'{ "app" : { "admins" : [ "alice" ] } }\n'}
    assert read_bundle_bytes(archive(spaced), key).data == {"app": {"admins": ["alice"]}}


def test_wrong_key_missing_signature_and_unconfigured_key_are_refused(tmp_path):
    priv, pub = _keys(tmp_path)
    _, other_pub = _keys(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path)
    signed, unsigned = tmp_path / "s.tar.gz", tmp_path / "u.tar.gz"
    build([_policy_dir(tmp_path)], signed, signing_key=priv)
    build([tmp_path / "src"], unsigned)
    with pytest.raises(BundleSignatureError, match="does not verify"):
        read_bundle(signed, signing.load_public_key(other_pub))
    with pytest.raises(BundleSignatureError, match="missing .signatures.json"):
        read_bundle(unsigned, signing.load_public_key(pub))
    with pytest.raises(BundleSignatureError, match="no verification key"):
        read_bundle(signed)


def test_ecdsa_keys_sign_and_verify(tmp_path):
    priv, pub = _keys(tmp_path, "ec")
    out = tmp_path / "b.tar.gz"
    build([_policy_dir(tmp_path)], out, signing_key=priv)
    token = json.loads(_files(out.read_bytes())[".signatures.json"])["signatures"][0]
    assert orjson.loads(_b64(token.split(".")[0]))["alg"] == "ES256"
    assert read_bundle(out, signing.load_public_key(pub)).signed


def test_hmac_or_unsigned_token_is_refused(tmp_path):
    import jwt

    _, pub = _keys(tmp_path)
    files = {"p.rego": b"package p\n"}
    payload = {"files": [{"name": "p.rego", "hash": hashlib.sha256(b"package p\n").hexdigest(),
                          "algorithm": "SHA-256"}]}
    for token in (jwt.encode(payload, "secret-secret-secret-secret-1234", algorithm="HS256"),
                  jwt.encode(payload, None, algorithm="none")):
        bad = {**files, ".signatures.json": json.dumps({"signatures": [token]}).encode()}
        with pytest.raises(BundleSignatureError, match="does not verify"):
            read_bundle_bytes(archive(bad), signing.load_public_key(pub))


@pytest.mark.parametrize("files, message", [
    ({".manifest": b'{"roots": ["app"]}', "other/p.rego": b"package other\n"}, "do not permit 'data.other'"),
    ({".manifest": b'{"roots": ["app"]}', "other/data.json": b'{"x": 1}'}, "do not permit data at path '/other'"),
    ({".manifest": b'{"roots": ["app", "app/x"]}'}, "overlapped roots"),
    ({"patch.json": b'{"data": []}'}, "delta bundles"),
    ({".manifest": b'{"rego_version": 0}', "p.rego": b"package p\n"}, "only Rego v1"),
    ({"data.json": b"[1]"}, "root value must be object"),
    ({"a/data.json": b'{"b": 1}', "a/b/data.json": b'{"c": 1}'}, "failed to insert"),
])
def test_invalid_bundles_are_refused(files, message):
    with pytest.raises(BundleError, match=message):
        read_bundle_bytes(archive(files))


def test_roots_admit_what_is_under_them():
    bundle = read_bundle_bytes(archive({".manifest": b'{"revision": "7", "roots": ["app", "tenants/acme"]}',
                                        "app/p.rego": b"package app.p\n", "tenants/acme/data.json": b'{"t": 1}'}))
    assert bundle.revision == "7" and bundle.roots == ("app", "tenants/acme")
    assert bundle.data == {"tenants": {"acme": {"t": 1}}}


def test_hostile_archives_are_refused_not_followed():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("evil.rego")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle_bytes(buf.getvalue())
    bundle = read_bundle_bytes(archive({"../../x/p.rego": b"package x\n"}))
    assert list(bundle.modules) == ["x/p.rego"]  # paths stay inside the bundle
    with pytest.raises(BundleError, match="larger than"):
        read_bundle_bytes(archive({"data.json": b'{"a": "' + b"x" * 5000 + b'"}'}), max_bytes=1000)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_bundle_or_a_bundle_error(raw):
    try:
        read_bundle_bytes(raw)
    except BundleError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(st.characters(codec="utf-8"), max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(_json, st.booleans())
def test_structured_digest_is_the_digest_of_sorted_compact_json(value, indent):
    """OPA's property (bundle/hash_test.go): hashing the parsed value = hashing Go's compact sorted JSON."""
    raw = json.dumps({"v": value}, indent=2 if indent else None).encode()
    go_json = json.dumps({"v": value}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    go_json = go_json.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    assert signing.file_digest("data.json", raw) == hashlib.sha256(go_json.encode()).hexdigest()


def test_numbers_keep_their_literal_text():
    raw = b'{"c": 123.45678911111111111111111111111111111111111111111111111, "a": 1e3}'
    expected = b'{"a":1e3,"c":123.45678911111111111111111111111111111111111111111111111}'
    assert signing.file_digest("x/data.json", raw) == hashlib.sha256(expected).hexdigest()
    assert signing.file_digest("p.rego", b" x ") == hashlib.sha256(b" x ").hexdigest()


def test_policy_build_and_eval_commands(tmp_path):
    src = _policy_dir(tmp_path)
    priv, pub = _keys(tmp_path)
    cli = str(REPO / ".venv" / "bin" / "llm-authz")
    out = tmp_path / "b.tar.gz"
    done = subprocess.run([cli, "policy", "build", str(src), "-o", str(out), "--signing-key", str(priv),
                           "--revision", "2026-12-01"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "revision 2026-12-01" in done.stdout and "signed" in done.stdout
    (tmp_path / "in.json").write_text('{"user": "alice"}')
    done = subprocess.run([cli, "policy", "eval", "-b", str(out), "--bundle-public-key", str(pub),
                           "-i", str(tmp_path / "in.json"), "data.app.rbac.allow"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"result": True}
    _, other = _keys(tmp_path / "o" if (tmp_path / "o").mkdir() is None else tmp_path)
    done = subprocess.run([cli, "policy", "eval", "-b", str(out), "--bundle-public-key", str(other),
                           "data.app.rbac.allow"], capture_output=True, text=True)
    assert done.returncode == 2 and "does not verify" in done.stderr


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
