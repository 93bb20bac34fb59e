"""Credentials in tenant files are validated with file, field and line; `keys new` makes usable keys."""

from __future__ import annotations

import hashlib
import re
import textwrap
import time

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


# ---- the resolver built from tenant files and the service config --------------------------------

SPIFFE = "spiffe://acme.example/ns/prod/sa/chatbot"


@pytest.fixture
def jwks_server():
    from tests.identity_fixtures import JwksServer

    running = JwksServer().start()
    yield running
    running.stop()


def _resolver(tmp_path, jwks_server, **config):
    from llm_authz.config import Config, JwksSettings
    from llm_authz.identity.jwks import JwksRegistry
    from llm_authz.identity.resolve import IdentityResolver
    from tests.conftest import REPO

    key = new_key("ES256", kid="idp-1")
    jwks_server.serve("/jwks", key)
    url = jwks_server.url("/jwks")
    tenants, errors = load(tmp_path, f"""\
      mtls:
        - {{spiffe_id: "{SPIFFE}", scopes: [inference:invoke]}}
      jwt:
        - {{issuer: "{ISSUER}", audiences: [llm-api], jwks_url: "{url}"}}
    """)
    assert not errors, errors
    registry = JwksRegistry(JwksSettings(fetch_timeout_seconds=5))
    cfg = Config(tenants=tmp_path, policies=REPO / "policies" / "rego", **config)
    return IdentityResolver.from_tenants(tenants, cfg, registry), registry, key, url


def _identity(resolver, headers=None, principal="", jwt_authn=None):
    from llm_authz.facts.request import from_check_request
    from tests.helpers import check_request

    request = check_request(headers=headers, principal=principal, body={"model": "gpt-4o", "messages": []})
    if jwt_authn is not None:
        request.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(jwt_authn)
    return resolver.resolve(from_check_request(request))


def test_the_resolver_built_from_tenants_honours_every_identity_setting_of_the_config(tmp_path, jwks_server):
    from tests.identity_fixtures import claims

    resolver, registry, key, url = _resolver(tmp_path, jwks_server, trust_xfcc=True, trust_envoy_jwt_authn=True,
                                             jwt_leeway_seconds=120)
    try:
        assert resolver.jwks_urls == (url,)  # kept alive across reloads by this list
        # The key set named by jwks_url verifies tokens; the configured leeway (120 s) is the one applied.
        expired_a_minute_ago = key.sign(claims(now=time.time() - 360))
        identity = _identity(resolver, {"authorization": f"Bearer {expired_a_minute_ago}"})
        assert identity.authenticated and identity.method == "jwt" and identity.tenant == "acme", identity
        # The tenant's mTLS principal, from the TLS peer and (trusted here) from XFCC.
        assert _identity(resolver, principal=SPIFFE).tenant == "acme"
        xfcc = f"By=spiffe://edge/envoy;Hash=9f86d0;URI={SPIFFE}"
        via_xfcc = _identity(resolver, {"x-forwarded-client-cert": xfcc}, principal="spiffe://edge/front-proxy")
        assert via_xfcc.tenant == "acme" and via_xfcc.subject == SPIFFE
        # Envoy's jwt_authn payload (trusted here) is an identity on its own.
        assert _identity(resolver, jwt_authn={"jwt_payload": claims()}).tenant == "acme"
    finally:
        registry.close()


def test_the_resolver_built_from_tenants_trusts_nothing_forwarded_by_default(tmp_path, jwks_server):
    from tests.identity_fixtures import claims

    resolver, registry, key, _ = _resolver(tmp_path, jwks_server, jwt_leeway_seconds=0)
    try:
        expired = key.sign(claims(now=time.time() - 305))
        assert _identity(resolver, {"authorization": f"Bearer {expired}"}).error == "invalid_credential"
        xfcc = f"By=spiffe://edge/envoy;Hash=9f86d0;URI={SPIFFE}"
        assert not _identity(resolver, {"x-forwarded-client-cert": xfcc}).authenticated
        assert not _identity(resolver, jwt_authn={"jwt_payload": claims()}).authenticated
    finally:
        registry.close()


def test_a_resolver_made_without_settings_does_not_trust_xfcc(tmp_path):
    from llm_authz.identity.api_keys import ApiKeyIndex
    from llm_authz.identity.mtls import MtlsIndex
    from llm_authz.identity.resolve import IdentityResolver

    tenants, errors = load(tmp_path, f'  mtls:\n    - {{spiffe_id: "{SPIFFE}", scopes: [inference:invoke]}}\n')
    assert not errors
    resolver = IdentityResolver(ApiKeyIndex(tenants), mtls=MtlsIndex(tenants))
    assert not _identity(resolver, {"x-forwarded-client-cert": f"Hash=9f;URI={SPIFFE}"}).authenticated
    assert _identity(resolver, principal=SPIFFE).tenant == "acme"


def test_a_key_file_gone_after_validation_refuses_the_tenant_set_naming_file_and_field(tmp_path):
    from llm_authz.config import Config
    from llm_authz.errors import TenantFileError
    from llm_authz.identity.jwks import JwksRegistry
    from llm_authz.identity.resolve import IdentityResolver
    from tests.conftest import REPO
    from tests.identity_fixtures import write_jwks

    write_jwks(tmp_path / "keys.json", new_key("ES256"))
    tenants, errors = load(tmp_path, f'  jwt:\n    - {{issuer: "{ISSUER}", audiences: [a], jwks_file: keys.json}}\n')
    assert not errors
    (tmp_path / "keys.json").unlink()  # between the validation and building the resolver (a reload racing a deploy)
    with pytest.raises(TenantFileError) as info:
        IdentityResolver.from_tenants(tenants, Config(tenants=tmp_path, policies=REPO / "policies" / "rego"),
                                      JwksRegistry())
    error = info.value
    assert (error.file, error.field) == (str(tenants["acme"].path), "credentials.jwt.0.jwks_file")
    assert error.message == f"cannot read {tmp_path / 'keys.json'}: No such file or directory"
    assert str(error) == f"{tenants['acme'].path}: credentials.jwt.0.jwks_file: {error.message}"
