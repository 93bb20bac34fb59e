"""The Check RPC straight over gRPC, with requests Envoy would never send: still answered, always denied."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from tests.conftest import ACME_KEY
from tests.helpers import check_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def authz(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.authz_port}") as channel:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


def test_an_empty_check_request_is_denied(authz):
    resp = authz.Check(external_auth_pb2.CheckRequest(), timeout=5)
    assert resp.HasField("denied_response") and resp.denied_response.status.code == 401


def test_an_allowed_request_over_grpc(authz):
    resp = authz.Check(check_request(headers={"authorization": f"Bearer {ACME_KEY}"},
                                     body={"model": "gpt-4o", "messages": []}), timeout=5)
    assert resp.HasField("ok_response"), resp
    assert resp.dynamic_metadata["tenant"] == "acme"


def test_body_only_in_the_string_field_is_read(authz):
    req = check_request(headers={"authorization": f"Bearer {ACME_KEY}"}, body={"model": "gpt-5", "messages": []})
    req.attributes.request.http.body = req.attributes.request.http.raw_body.decode()
    req.attributes.request.http.ClearField("raw_body")
    resp = authz.Check(req, timeout=5)
    assert resp.denied_response.status.code == 403 and b"model_not_allowed" in resp.denied_response.body.encode()


def test_a_message_over_the_size_limit_is_refused_not_crashing(authz):
    req = check_request(headers={"authorization": f"Bearer {ACME_KEY}"}, body=b"x" * (9 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as exc:
        authz.Check(req, timeout=10)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert authz.Check(external_auth_pb2.CheckRequest(), timeout=5).HasField("denied_response")
