"""mTLS principals, XFCC trust, and binding several credentials to one tenant."""

from __future__ import annotations

import pytest

from llm_authz.facts.request import from_check_request
from llm_authz.identity.api_keys import ApiKeyIndex, new_key
from llm_authz.identity.mtls import MAX_XFCC_CHARS, MtlsIndex, xfcc_uris
from llm_authz.identity.resolve import IdentityResolver
from llm_authz.tenants import ApiKey, Credentials, MtlsPrincipal, Tenant, TenantFile
from tests.helpers import check_request

ACME_SPIFFE = "spiffe://acme.example/ns/prod/sa/chatbot"
FREE_SPIFFE = "spiffe://hobbyist.example/sa/app"
ACME_KEY, ACME_DIGEST = new_key()
FREE_KEY, FREE_DIGEST = new_key()


def tenant(tid: str, spiffe: str, digest: str) -> TenantFile:
    creds = Credentials(mtls=[MtlsPrincipal(spiffe_id=spiffe, scopes=["inference:invoke"])],
                        api_keys=[ApiKey(id=f"ak_{tid}", sha256=digest, scopes=["inference:invoke", "keys"])])
    return TenantFile(tenant=Tenant(id=tid, tier="free", credentials=creds), path=f"/t/{tid}.yaml")


TENANTS = {"acme": tenant("acme", ACME_SPIFFE, ACME_DIGEST), "hobbyist": tenant("hobbyist", FREE_SPIFFE, FREE_DIGEST)}


def resolve(principal: str = "", headers: dict | None = None, trust_xfcc: bool = False):
    resolver = IdentityResolver(ApiKeyIndex(TENANTS), mtls=MtlsIndex(TENANTS), trust_xfcc=trust_xfcc)
    return resolver.resolve(from_check_request(check_request(headers=headers, principal=principal,
                                                             body={"model": "m", "messages": []})))


def test_a_registered_spiffe_id_maps_to_its_tenant_and_scopes():
    identity = resolve(ACME_SPIFFE)
    assert identity.authenticated and identity.method == "mtls"
    assert (identity.tenant, identity.subject, identity.scopes) == ("acme", ACME_SPIFFE, ["inference:invoke"])


@pytest.mark.parametrize("principal", [
    "spiffe://acme.example/ns/prod/sa/chatbot/", "spiffe://acme.example/ns/prod/sa/chat", "chatbot.acme.example",
    "spiffe://ACME.example/ns/prod/sa/chatbot", "CN=chatbot",
])
def test_an_unregistered_principal_alone_is_401(principal):
    identity = resolve(principal)
    assert identity.error == "invalid_credential" and identity.method == "mtls"
    assert principal not in identity.error_description


def test_no_certificate_and_no_credential_is_missing():
    assert resolve().error == "missing_credential"


def test_a_certificate_and_a_key_of_the_same_tenant_use_the_key():
    identity = resolve(ACME_SPIFFE, {"x-api-key": ACME_KEY})
    assert identity.method == "api_key" and identity.tenant == "acme" and "keys" in identity.scopes


def test_a_certificate_and_a_key_of_different_tenants_are_401():
    identity = resolve(ACME_SPIFFE, {"x-api-key": FREE_KEY})
    assert identity.error == "invalid_credential" and "different tenants" in identity.error_description


def test_an_unregistered_certificate_does_not_spoil_a_valid_key():
    assert resolve("spiffe://gateway.example/envoy", {"authorization": f"Bearer {ACME_KEY}"}).tenant == "acme"


def test_a_client_sent_xfcc_header_is_ignored_by_default():
    xfcc = f'By=spiffe://llm-authz;Hash=abc;URI={ACME_SPIFFE}'
    assert resolve(headers={"x-forwarded-client-cert": xfcc}).error == "missing_credential"
    assert resolve(FREE_SPIFFE, {"x-forwarded-client-cert": xfcc}).tenant == "hobbyist"


def test_xfcc_is_read_when_the_deployment_trusts_it():
    xfcc = f'By=spiffe://edge/envoy;Hash=9f86d0;Subject="CN=chatbot,O=Acme";URI={ACME_SPIFFE};DNS=chatbot'
    identity = resolve("spiffe://edge/front-proxy", {"x-forwarded-client-cert": xfcc}, trust_xfcc=True)
    assert identity.tenant == "acme" and identity.subject == ACME_SPIFFE


@pytest.mark.parametrize("xfcc", [
    f'By=x;URI="{ACME_SPIFFE}"',
    f'By=spiffe://first;URI={FREE_SPIFFE},By=spiffe://edge;URI={ACME_SPIFFE}',  # the nearest proxy's element
    f'Subject="CN=a;b,c=d";URI={ACME_SPIFFE}',
])
def test_xfcc_parsing(xfcc):
    assert xfcc_uris(xfcc)[-1] == ACME_SPIFFE


@pytest.mark.parametrize("xfcc, problem", [
    ('URI="unterminated', "the x-forwarded-client-cert header is malformed"),
    ("justtext", "the x-forwarded-client-cert header is malformed"),
    (f"URI={ACME_SPIFFE};URI={FREE_SPIFFE}", "the client certificate carries more than one SPIFFE ID"),
])
def test_a_malformed_trusted_xfcc_is_401(xfcc, problem):
    identity = resolve(headers={"x-forwarded-client-cert": xfcc}, trust_xfcc=True)
    assert (identity.method, identity.error, identity.error_description) == ("mtls", "invalid_credential", problem)


def test_trusted_xfcc_without_a_spiffe_uri_falls_back_to_the_peer_principal():
    identity = resolve(ACME_SPIFFE, {"x-forwarded-client-cert": "Hash=abc;DNS=chatbot"}, trust_xfcc=True)
    assert identity.tenant == "acme"


def test_identity_headers_sent_by_the_client_are_never_identity():
    identity = resolve(headers={"x-llm-authz-tenant": "acme", "x-llm-authz-subject": "admin", "x-tenant-id": "acme"})
    assert identity.error == "missing_credential" and identity.tenant is None


def test_a_quoted_value_may_hold_escaped_quotes_and_separators():
    xfcc = f'By=spiffe://edge/envoy;Subject="CN=a\\"b;c,d\\\\";URI={ACME_SPIFFE}'
    identity = resolve(FREE_SPIFFE, {"x-forwarded-client-cert": xfcc}, trust_xfcc=True)
    assert identity.tenant == "acme" and identity.subject == ACME_SPIFFE


@pytest.mark.parametrize("xfcc, uris", [
    ('URI="spiffe://a.example/b\\"c"', ['spiffe://a.example/b"c']),  # XFCC escapes '"' and '\' in quoted values
    ('URI="spiffe://a.example/b\\\\c"', ["spiffe://a.example/b\\c"]),
    ('URI="spiffe://a.example/b=c"', ["spiffe://a.example/b=c"]),  # a field splits at its first '='
    ('URI=""', [""]),
    ('"URI=spiffe://a.example/b"', []),  # a quoted string is a value, never a field name
])
def test_xfcc_values_are_unquoted_exactly(xfcc, uris):
    assert xfcc_uris(xfcc) == uris


def test_only_the_nearest_proxys_element_counts():
    xfcc = f"By=spiffe://first;URI={FREE_SPIFFE},By=spiffe://edge;URI={ACME_SPIFFE}"
    identity = resolve(headers={"x-forwarded-client-cert": xfcc}, trust_xfcc=True)
    assert identity.tenant == "acme" and identity.subject == ACME_SPIFFE


def test_an_xfcc_header_up_to_64_kib_is_read_and_a_larger_one_is_401():
    head = f"URI={ACME_SPIFFE};DNS="
    at_limit = head + "d" * (MAX_XFCC_CHARS - len(head))
    assert resolve(headers={"x-forwarded-client-cert": at_limit}, trust_xfcc=True).tenant == "acme"
    identity = resolve(headers={"x-forwarded-client-cert": at_limit + "d"}, trust_xfcc=True)
    assert (identity.error, identity.error_description) == (
        "invalid_credential", "the x-forwarded-client-cert header is malformed")


# ---- credentials in headers: exactly one, well formed ----------------------------------------------

MALFORMED_AUTH = "the Authorization header is malformed (expected one 'Bearer <token>')"


@pytest.mark.parametrize("headers, method, description", [
    ({"authorization": "Basic dXNlcjpwYXNz"}, "none", MALFORMED_AUTH),
    ({"authorization": "Bearer"}, "none", MALFORMED_AUTH),
    ({"authorization": "Bearer   "}, "none", MALFORMED_AUTH),
    ({"authorization": "Bearer a b"}, "none", MALFORMED_AUTH),
    ({"authorization": "Bearer a,b"}, "none", MALFORMED_AUTH),
    ({"x-api-key": "  "}, "api_key", "the x-api-key header is malformed"),
    ({"x-api-key": "a key"}, "api_key", "the x-api-key header is malformed"),
    ({"x-goog-api-key": "a;b"}, "api_key", "the x-goog-api-key header is malformed"),
    ({"x-api-key": ACME_KEY, "x-goog-api-key": FREE_KEY}, "none", "two different credentials were presented"),
    ({"authorization": f"Bearer {ACME_KEY}", "x-api-key": FREE_KEY}, "none", "two different credentials were presented"),
])
def test_a_malformed_or_second_credential_is_401_saying_which(headers, method, description):
    identity = resolve(headers=headers)
    assert (identity.error, identity.method, identity.error_description) == ("invalid_credential", method, description)


@pytest.mark.parametrize("headers", [
    {"authorization": f"bearer {ACME_KEY}"}, {"authorization": f"  BEARER   {ACME_KEY}  "},
    {"x-api-key": f" {ACME_KEY} "}, {"x-goog-api-key": ACME_KEY},
    {"authorization": f"Bearer {ACME_KEY}", "x-api-key": ACME_KEY, "x-goog-api-key": ACME_KEY},  # the same key thrice
])
def test_one_key_in_any_accepted_header_and_spelling_is_read(headers):
    identity = resolve(headers=headers)
    assert identity.authenticated and identity.tenant == "acme" and identity.method == "api_key"


def test_a_bearer_token_with_padding_is_well_formed():
    assert resolve(headers={"authorization": "Bearer abc.def-_~+/=="}).error_description == "the API key is not valid"


@pytest.mark.parametrize("deadline, until", [
    (None, 100.5),  # no deadline: a key refetch is waited for half a second at most
    (101.0, 100.9),  # most of what is left, keeping 0.1 s for the policy
    (100.1, 100.05),  # little left: half of it
    (99.0, 100.0),  # past: no wait at all
])
def test_identity_waits_for_keys_only_within_the_checks_deadline(monkeypatch, deadline, until):
    from llm_authz.identity import resolve as resolve_module

    from types import SimpleNamespace

    monkeypatch.setattr(resolve_module, "time", SimpleNamespace(monotonic=lambda: 100.0))  # this module's clock only
    assert resolve_module.wait_until(deadline) == pytest.approx(until)


def test_binding_refusals_name_the_method_and_the_reason():
    alone = resolve("spiffe://gateway.example/envoy")
    assert (alone.method, alone.error_description) == (
        "mtls", "the client certificate's identity is not registered for any tenant")
    mixed = resolve(ACME_SPIFFE, {"x-api-key": FREE_KEY})
    assert (mixed.method, mixed.error_description) == ("api_key", "the credentials presented belong to different tenants")
    assert resolve().as_input() == {
        "authenticated": False, "method": "none", "subject": None, "issuer": None, "tenant": None, "scopes": [],
        "key_id": None, "claims": {}, "error": "missing_credential", "error_description": "no credential was presented"}
