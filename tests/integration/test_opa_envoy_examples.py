"""OPA-Envoy's own published example policies, unchanged, through a real Envoy: each decides as its
documentation says. The policies are copies kept in tests/data/opa_envoy_examples (SOURCES.md names
where each comes from); docs/opa-envoy.md lists the ones that cannot run and why.

One Envoy and one upstream serve the whole module; llm-authz is served again on the same port with
each example's policy and entrypoint (Envoy reconnects by itself).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from llm_authz import cli
from llm_authz.config import load_config
from llm_authz.demo import processes
from llm_authz.server import Server
from tests.conftest import REPO, Stack, start_stack

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "opa_envoy_examples"

# The tokens the documentation gives (HS256, secret "secret"): OPA's standalone Envoy tutorial
# (expiring 2041) and the opa-envoy-plugin README's quick start (expiring 2031).
TUTORIAL_ALICE = ("eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJleHAiOiAyMjQxMDgxNTM5LCAibmJmIjogMTUxNDg1MTEzOSwgInJvbGUi"
                  "OiAiZ3Vlc3QiLCAic3ViIjogIllXeHBZMlU9In0.Uk5hgUqMuUfDLvBLnlXMD0-X53aM_Hlziqg3vhOsCc8")
TUTORIAL_BOB = ("eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJleHAiOiAyMjQxMDgxNTM5LCAibmJmIjogMTUxNDg1MTEzOSwgInJvbGUiOiAi"
                "YWRtaW4iLCAic3ViIjogIlltOWkifQ.5qsm7rRTvqFHAgiB6evX0a_hWnGbWquZC0HImVQPQo8")
README_ALICE = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoiZ3Vlc3QiLCJzdWIiOiJZV3hwWTJVPSIsIm5iZiI6MTUxNDg1MTEzOSwi"
                "ZXhwIjoxOTQxMDgxNTM5fQ.rN_hxMsoQzCjg6lav6mfzDlovKM9azaAjuwhjq3n9r8")
README_BOB = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoiYWRtaW4iLCJzdWIiOiJZbTlpIiwibmJmIjoxNTE0ODUxMTM5LCJleHAi"
              "OjE5NDEwODE1Mzl9.ek3jmNLPclafELVLTfyjtQNj0QKIEGrbhKqpwXmQ8EQ")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def basic(user: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:password".encode()).decode()}


class Examples:
    """The shared Envoy, and an llm-authz server (in this process: a restart costs no interpreter
    start) replaced per example."""

    def __init__(self, stack: Stack, workdir: Path):
        self.stack = stack
        self.workdir = workdir
        self.server: Server | None = None
        self.runs = 0

    def serve(self, files: list[str], entrypoint: str, raw_credentials: bool = False, **settings: object) -> Path:
        """Serve these example files as the one policy module at this entrypoint; returns the audit dir."""
        self.stop()
        self.runs += 1
        run = self.workdir / f"run{self.runs}"
        (run / "policies").mkdir(parents=True)
        # An example made of two published snippets (the primer's policy and its output document)
        # is one module, as the primer says to write it.
        (run / "policies" / "policy.rego").write_text("\n".join((EXAMPLES / f).read_text() for f in files))
        audit = run / "audit"
        config = load_config(None, {
            "listen": f"127.0.0.1:{self.stack.authz_port}", "metrics_listen": f"127.0.0.1:{processes.free_port()}",
            "tenants": REPO / "tenants", "policies": run / "policies", "audit_dir": audit,
            "entrypoint": entrypoint, "raw_credentials": raw_credentials, "watch": False,
            "shutdown_grace_seconds": 1, **settings})
        self.server = Server(config)
        self.server.start()
        self.request("GET", "/__ready__")
        return audit

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # closes the audit log
            self.server = None

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                json: object = None, content: bytes | None = None) -> httpx.Response:
        """Envoy's answer once llm-authz decided. Every answer llm-authz gives carries its decision id;
        one without it is Envoy's own error while it reconnects to the server just replaced."""
        deadline = time.monotonic() + 10
        while True:
            response = httpx.request(method, self.stack.url + path, headers=headers or {}, json=json,
                                     content=content, timeout=10)
            if "x-llm-authz-decision-id" in response.headers or time.monotonic() > deadline:
                return response
            time.sleep(0.05)

    def status(self, method: str, path: str, headers: dict[str, str] | None = None, json: object = None) -> int:
        return self.request(method, path, headers, json).status_code


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Examples]:
    workdir = tmp_path_factory.mktemp("opa-envoy-examples")
    stack, stop_all = start_stack(workdir / "stack")
    processes.stop(stack.authz)  # the examples bring their own server on the same port
    running = Examples(stack, workdir)
    yield running
    running.stop()
    stop_all()


def policy_check(policies: Path, entrypoint: str) -> int:
    return cli.main(["policy", "check", "--policies", str(policies), "--tenants", str(REPO / "tenants"),
                     "--entrypoint", entrypoint])


def people_with_jwt(ex: Examples, alice: str, bob: str) -> None:
    """OPA-Envoy's quick start, as its README exercises it."""
    assert ex.status("GET", "/people", bearer(alice)) == 200
    assert ex.status("POST", "/people", bearer(alice), {"firstname": "Charlie", "lastname": "OPA"}) == 403
    assert ex.status("GET", "/people", bearer(bob)) == 200
    assert ex.status("POST", "/people", bearer(bob), {"firstname": "Charlie", "lastname": "Opa"}) == 200
    assert ex.status("POST", "/people", bearer(bob), {"firstname": "Bob", "lastname": "Rego"}) == 403
    assert ex.status("GET", "/people") == 403


@pytest.mark.parametrize("policy", ["quick-start.rego", "envoy-uds.rego"])
def test_quick_starts_decode_the_jwt_with_raw_credentials(examples, policy):
    examples.serve([policy], "data.envoy.authz.allow", raw_credentials=True)
    people_with_jwt(examples, README_ALICE, README_BOB)


def test_by_default_the_policy_sees_only_the_scheme_and_denies(examples):
    examples.serve(["quick-start.rego"], "data.envoy.authz.allow")
    # io.jwt.decode_verify("[redacted]") is a builtin error (strict builtins): a policy error, which denies
    denied = examples.request("GET", "/people", bearer(README_ALICE))
    assert denied.status_code == 500 and denied.json()["error"]["code"] == "policy_error"


def test_tutorial_standalone_envoy(examples):
    examples.serve(["tutorial-standalone-envoy.rego"], "data.envoy.authz.allow", raw_credentials=True)
    assert examples.status("GET", "/people", bearer(TUTORIAL_ALICE)) == 200
    assert examples.status("GET", "/people", bearer(TUTORIAL_BOB)) == 200
    assert examples.status("POST", "/people", bearer(TUTORIAL_ALICE), {"firstname": "Foo", "lastname": "Bar"}) == 403
    assert examples.status("POST", "/people", bearer(TUTORIAL_BOB), {"firstname": "Foo", "lastname": "Bar"}) == 200
    assert examples.status("POST", "/people", bearer(TUTORIAL_BOB), {"firstname": "Bob", "lastname": "Bar"}) == 403


def test_the_audit_log_never_holds_the_raw_credential_and_replay_says_so(examples, capsys):
    audit = examples.serve(["istio-quick-start.rego"], "data.istio.authz.allow", raw_credentials=True)
    assert examples.status("GET", "/productpage", basic("alice")) == 200
    assert examples.status("GET", "/api/v1/products", basic("alice")) == 403
    assert examples.status("GET", "/health") == 200
    examples.stop()
    logged = b"".join(p.read_bytes() for p in audit.rglob("*") if p.is_file())
    assert basic("alice")["authorization"].split()[1].encode() not in logged
    assert b"Basic [redacted]" in logged
    assert cli.main(["replay", str(audit), "--format", "json", "--jobs", "1"]) == 0
    parsed = orjson.loads(capsys.readouterr().out)
    unreproducible = parsed["unreproducible"]
    # the two decisions that read the Authorization header; /health and the readiness probe carried none
    assert len(unreproducible) == 2, parsed
    assert all("/attributes/request/http/headers/authorization" in u["detail"] for u in unreproducible)
    assert not parsed["mismatches"]


@pytest.mark.parametrize("policy", ["istio-quick-start.rego", "tutorial-istio.rego"])
def test_istio_basic_auth(examples, policy):
    examples.serve([policy], "data.istio.authz.allow", raw_credentials=True)
    assert examples.status("GET", "/productpage", basic("alice")) == 200
    assert examples.status("GET", "/api/v1/products", basic("alice")) == 403
    assert examples.status("GET", "/productpage", basic("bob")) == 200
    assert examples.status("GET", "/api/v1/products", basic("bob")) == 200
    assert examples.status("GET", "/productpage") == 403


def test_istio_quick_start_health_needs_no_credential(examples):
    examples.serve(["istio-quick-start.rego"], "data.istio.authz.allow")
    assert examples.status("GET", "/health") == 200


def test_gloo_edge_allows_get_only(examples):
    examples.serve(["gloo-edge.rego"], "data.envoy.authz.allow")
    assert examples.status("GET", "/get") == 200
    assert examples.status("POST", "/post") == 403


def test_primer_jwt(examples):
    examples.serve(["primer-jwt.rego"], "data.envoy.authz.allow", raw_credentials=True)
    assert examples.status("GET", "/people/", bearer(TUTORIAL_ALICE)) == 200
    assert examples.status("POST", "/people", bearer(TUTORIAL_BOB), {"firstname": "Charlie", "lastname": "Opa"}) == 200
    assert examples.status("POST", "/people", bearer(TUTORIAL_BOB), {"firstname": "Bob", "lastname": "Opa"}) == 403
    assert examples.status("POST", "/people", bearer(TUTORIAL_ALICE), {"firstname": "Charlie", "lastname": "Opa"}) == 403


def test_primer_additional_controls_and_output_document(examples):
    examples.serve(["primer-additional-controls.rego", "primer-output-document.rego", "primer-missing-rule.rego"],
                   "data.envoy.authz.result", raw_credentials=True)
    allowed = examples.request("GET", "/people/?debug=1",
                               {**bearer(TUTORIAL_ALICE), "one-auth-header": "x", "another-auth-header": "y"})
    assert allowed.status_code == 200
    assert allowed.headers["x-foo"] == "bar"  # response_headers_to_add, to the client on allow
    seen = allowed.json()
    upstream = seen["received_headers"]
    assert upstream["x-ext-auth-allow"] == "yes" and upstream["x-validated-by"] == "security-checkpoint"
    assert "one-auth-header" not in upstream and "another-auth-header" not in upstream
    # query_parameters_to_set: both tags are sent to Envoy (as OPA-Envoy sends them), and Envoy *sets*
    # each in turn, so the last one stays (docs/opa-envoy.md)
    assert "user-role=guest" in seen["query"] and "tags=auth-enabled" in seen["query"]
    assert "debug" not in seen["query"]  # query_parameters_to_remove
    unauthenticated = examples.request("GET", "/people/")
    assert unauthenticated.status_code == 401 and unauthenticated.text == "Authentication Failed"
    assert unauthenticated.headers["x-ext-auth-allow"] == "yes"  # `headers` go to the client on a deny
    forbidden = examples.request("POST", "/people", bearer(TUTORIAL_ALICE), {"firstname": "Charlie"})
    assert forbidden.status_code == 403 and forbidden.text == "Unauthorized Request"


def test_primer_parsed_path_query_and_body(examples):
    examples.serve(["primer-parsed-path.rego"], "data.envoy.authz.allow")
    assert examples.status("GET", "/people") == 200
    assert examples.status("GET", "/people/") == 403  # parsed_path ["people", ""], as OPA-Envoy makes it
    examples.serve(["primer-parsed-query.rego"], "data.envoy.authz.allow")
    assert examples.status("GET", "/people?lang=en&id=1&id=2") == 200
    assert examples.status("GET", "/people?lang=fr&id=1&id=2") == 403
    examples.serve(["primer-parsed-body.rego"], "data.envoy.authz.allow")
    assert examples.status("POST", "/people", json={"firstname": "Charlie", "lastname": "Opa"}) == 200
    assert examples.status("POST", "/people", json={"firstname": "Mallory", "lastname": "Opa"}) == 403
    # a JSON body beyond what is read of an unauthenticated caller's is answered 400, not read as absent
    large = {"firstname": "Charlie", "lastname": "Opa", "padding": "x" * 70_000}
    assert examples.status("POST", "/people", json=large) == 400
    examples.serve(["primer-parsed-body.rego"], "data.envoy.authz.allow", unauthenticated_body_bytes=256 * 1024)
    assert examples.status("POST", "/people", json=large) == 200
    # a body the strict reader refuses (a repeated key) is not read in the caller's favour
    assert examples.request("POST", "/people", {"content-type": "application/json"},
                            content=b'{"firstname": "Charlie", "lastname": "Opa", "lastname": "Opa"}').status_code == 400


def test_readme_object_response_upgraded_to_v1(examples):
    examples.serve(["readme-object-response.v1.rego"], "data.envoy.authz.allow")
    allowed = examples.request("GET", "/anything")
    assert allowed.status_code == 200 and allowed.json()["received_headers"]["x-ext-auth-allow"] == "yes"
    denied = examples.request("POST", "/anything")
    assert denied.status_code == 301 and denied.text == "Unauthorized Request"
    assert denied.headers["x-ext-auth-allow"] == "no"


def test_readme_headers_array_upgraded_to_v1(examples):
    examples.serve(["readme-headers-array.v1.rego"], "data.envoy.authz.allow")
    assert examples.status("GET", "/people") == 200
    denied = examples.request("POST", "/admin")
    assert denied.status_code == 400 and denied.text == "Unauthorized Request"
    assert sorted(denied.headers.get_list("why")) == ["/admin path is not allowed", "POST method is not allowed"]
    assert examples.status("GET", "/admin") == 400


def test_primer_output_document_as_published_is_refused_as_opa_refuses_it(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "policy.rego").write_text("\n".join(
        (EXAMPLES / f).read_text() for f in ("primer-additional-controls.rego", "primer-output-document.rego")))
    assert policy_check(tmp_path / "p", "data.envoy.authz.result") == 1
    assert "var query_parameters_to_remove is unsafe" in capsys.readouterr().err


@pytest.mark.parametrize("policy", ["readme-v0-example-policy.rego", "readme-v0-object-response.rego",
                                    "readme-v0-headers-array.rego"])
def test_rego_v0_examples_are_refused_with_a_clear_error(tmp_path, capsys, policy):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "policy.rego").write_text((EXAMPLES / policy).read_text())
    assert policy_check(tmp_path / "p", "data.envoy.authz.allow") == 1
    err = capsys.readouterr().err
    assert "Rego v0" in err and "--v0-v1" in err
