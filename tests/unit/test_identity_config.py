"""Credentials in tenant files are validated with file, field and line; `keys new` makes usable keys."""

from __future__ import annotations

import hashlib
import re
import textwrap

import orjson
import pytest
import yaml

from llm_authz.cli import main
from llm_authz.tenants import ApiKey, load_tenants
from tests.identity_fixtures import ISSUER, new_key, write_jwks

HEAD = "id: acme\ntier: premium\ncredentials:\n"


def load(tmp_path, body: str, files: dict[str, str] | None = None):
    (tmp_path / "acme.yaml").write_text(HEAD + textwrap.indent(textwrap.dedent(body), "  "))
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    return load_tenants(tmp_path)


def only_error(tmp_path, body: str, files: dict[str, str] | None = None):
    tenants, errors = load(tmp_path, body, files)
    assert len(errors) == 1, errors
    return errors[0]


def test_a_valid_issuer_with_a_key_file_loads(tmp_path):
    write_jwks(tmp_path / "keys" / "acme.jwks.json", new_key("ES256"))
    tenants, errors = load(tmp_path, f"""\
      jwt:
        - {{issuer: "{ISSUER}", audiences: [llm-api], jwks_file: keys/acme.jwks.json, claims: [email]}}
        - {{issuer: "https://other.test", audiences: [llm-api], jwks_url: "https://other.test/jwks.json"}}
    """)
    assert not errors and len(tenants["acme"].tenant.credentials.jwt) == 2


@pytest.mark.parametrize("entry, field, message", [
    ('{issuer: "https://i", audiences: [a]}', "credentials.jwt.0", "jwks_file or jwks_url"),
    ('{issuer: "https://i", audiences: [a], jwks_file: k.json, jwks_url: "https://i/k"}', "credentials.jwt.0",
     "not both"),
    ('{issuer: "https://i", audiences: [a], jwks_url: "http://idp.example/k"}', "credentials.jwt.0.jwks_url", "https"),
    ('{issuer: "https://i", audiences: [a], jwks_url: "file:///etc/k"}', "credentials.jwt.0.jwks_url", "https"),
    ('{issuer: "https://i", audiences: [a], jwks_url: "https://i/k", algorithms: [HS256]}',
     "credentials.jwt.0.algorithms", "HMAC"),
    ('{issuer: "https://i", audiences: [a], jwks_url: "https://i/k", algorithms: [none]}',
     "credentials.jwt.0.algorithms", "unsigned"),
    ('{issuer: "https://i", audiences: [], jwks_url: "https://i/k"}', "credentials.jwt.0.audiences", ""),
    ('{issuer: "https://i", audiences: [a], jwks_file: missing.json}', "credentials.jwt.0.jwks_file", "cannot read"),
    ('{issuer: "https://i", audiences: [a], jwks_file: bad.json}', "credentials.jwt.0.jwks_file", "not valid JSON"),
    ('{issuer: "https://i", audiences: [a], jwks_file: secret.json}', "credentials.jwt.0.jwks_file", "shared secret"),
])
def test_bad_issuer_entries_name_file_field_and_line(tmp_path, entry, field, message):
    files = {"bad.json": "{", "secret.json": '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'}
    err = only_error(tmp_path, f"  jwt:\n    - {entry}\n", files)
    assert err.field == field and message in err.message
    assert err.line == 5 and err.file.endswith("acme.yaml")


def test_http_jwks_url_is_allowed_only_to_loopback(tmp_path):
    tenants, errors = load(tmp_path, """\
      jwt:
        - {issuer: "a", audiences: [x], jwks_url: "http://127.0.0.1:8080/jwks"}
        - {issuer: "b", audiences: [x], jwks_url: "http://[::1]:8080/jwks"}
        - {issuer: "c", audiences: [x], jwks_url: "http://localhost/jwks"}
    """)
    assert not errors


def test_one_issuer_twice_in_one_tenant_is_an_error(tmp_path):
    err = only_error(tmp_path, """\
      jwt:
        - {issuer: "a", audiences: [x], jwks_url: "https://a/jwks"}
        - {issuer: "a", audiences: [y], jwks_url: "https://a/jwks"}
    """)
    assert "listed twice" in err.message and err.line == 6


def test_tenants_sharing_an_issuer_must_name_tenant_claim(tmp_path):
    (tmp_path / "other.yaml").write_text(
        'id: other\ntier: free\ncredentials:\n  jwt:\n    - {issuer: "a", audiences: [x], jwks_url: "https://a/j"}\n')
    _, errors = load(tmp_path, '  jwt:\n    - {issuer: "a", audiences: [x], jwks_url: "https://a/j"}\n')
    assert len(errors) == 2 and all("tenant_claim" in e.message for e in errors)


def test_one_spiffe_id_in_two_tenants_is_an_error(tmp_path):
    spiffe = "spiffe://acme.example/sa/bot"
    (tmp_path / "other.yaml").write_text(f"id: other\ntier: free\ncredentials:\n  mtls:\n    - {{spiffe_id: '{spiffe}'}}\n")
    err = only_error(tmp_path, f"  mtls:\n    - {{spiffe_id: '{spiffe}'}}\n")
    assert "already bound" in err.message


@pytest.mark.parametrize("spiffe", ["https://acme.example/sa/bot", "spiffe://", "spiffe://acme example/x"])
def test_a_spiffe_id_must_look_like_one(tmp_path, spiffe):
    err = only_error(tmp_path, f"  mtls:\n    - {{spiffe_id: '{spiffe}'}}\n")
    assert err.field == "credentials.mtls.0.spiffe_id"


def test_the_shipped_example_tenants_are_valid():
    from tests.conftest import REPO

    tenants, errors = load_tenants(REPO / "tenants")
    assert not errors
    acme = tenants["acme"].tenant.credentials
    assert acme.jwt and (REPO / "tenants" / acme.jwt[0].jwks_file).is_file()
    for path in (REPO / "tenants").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "PRIVATE KEY" not in text and '"d"' not in text, path


# ---- llm-authz keys new ----------------------------------------------------------------------------

def test_keys_new_prints_the_key_once_and_an_entry_that_loads(tmp_path, capsys):
    assert main(["keys", "new", "--tenant", "acme", "--scopes", "inference:invoke", "models:read",
                 "--expires", "2031-01-01T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"sk-llm-[A-Za-z0-9_-]{43}", out).group(0)
    assert out.count(key) == 1
    entry_line = next(line for line in out.splitlines() if line.strip().startswith("- {"))
    assert key not in entry_line
    entry = ApiKey.model_validate(yaml.safe_load(entry_line.strip())[0])
    assert entry.sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert entry.scopes == ["inference:invoke", "models:read"] and entry.expires.year == 2031
    assert entry.id.startswith("ak_acme_")


def test_keys_new_json_and_fresh_keys_each_time(capsys):
    main(["keys", "new", "--tenant", "acme", "--json", "--id", "ak_acme_ci"])
    first = orjson.loads(capsys.readouterr().out)
    main(["keys", "new", "--tenant", "acme", "--json", "--id", "ak_acme_ci"])
    second = orjson.loads(capsys.readouterr().out)
    assert first["key"] != second["key"] and first["entry"]["id"] == "ak_acme_ci"
    assert len(first["key"]) >= 7 + 43  # 256 bits of entropy after the prefix


@pytest.mark.parametrize("args", [
    ["--tenant", "Acme!"], ["--tenant", "acme", "--expires", "2020-01-01T00:00:00Z"],
    ["--tenant", "acme", "--expires", "2031-01-01T00:00:00"], ["--tenant", "acme", "--expires", "soon"],
    ["--tenant", "acme", "--scopes", "*admin"], ["--tenant", "acme", "--id", "a b"],
])
def test_keys_new_refuses_bad_arguments(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(["keys", "new", *args])
    assert info.value.code == 2 and "sk-llm-" not in capsys.readouterr().out
