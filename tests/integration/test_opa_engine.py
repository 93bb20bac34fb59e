"""The `opa` engine (an OPA server over REST) gives the same answers as the embedded one, and denies when down.

The OPA server here is tests/mock_opa_server.py (a MOCK: no OPA binary is installable here).
"""

from __future__ import annotations

import pytest

from tests.conftest import ACME_KEY, FREE_KEY, start_stack
from tests.mock_opa_server import MockOpaServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def opa_stack(tmp_path_factory):
    mock = MockOpaServer()
    running, stop_all = start_stack(tmp_path_factory.mktemp("opa"), ["--engine", "opa", "--opa-url", mock.url])
    running.extra["mock"] = mock
    yield running
    stop_all()
    mock.close()


def test_decisions_come_from_the_opa_server(opa_stack):
    before = opa_stack.extra["mock"].requests
    assert opa_stack.chat(ACME_KEY).status_code == 200
    r = opa_stack.chat(FREE_KEY, model="gpt-4o")
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert opa_stack.extra["mock"].requests == before + 2


def test_opa_server_down_denies_with_500(opa_stack):
    opa_stack.extra["mock"].close()
    r = opa_stack.chat(ACME_KEY)
    assert r.status_code == 500 and r.json()["error"]["code"] == "policy_error"
