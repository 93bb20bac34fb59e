"""Which logged decisions replay can reproduce."""

from llm_authz.replay.determinism import non_deterministic_builtins, reads_masked_input


def test_clock_and_network_builtins_are_found():
    modules = {"a.rego": "package a\nimport rego.v1\nx := time.now_ns()\n# http.send({}) in a comment\n",
               "b.rego": "package b\nimport rego.v1\ny := http.send({\"url\": \"x\"})\nz := time.parse_rfc3339_ns(input.t)\n"}
    assert non_deterministic_builtins(modules) == ["http.send", "time.now_ns"]


def test_masked_input_is_read_only_when_the_projection_reaches_it():
    masked = ["/parsed_body", "/attributes/request/http/body", "/request/headers/x-user-email"]
    assert reads_masked_input({"identity": None, "payload": {"bytes": None}}, masked) == []
    assert reads_masked_input({"parsed_body": {"temperature": None}}, masked) == ["/parsed_body"]
    assert reads_masked_input({"attributes": None}, masked) == ["/attributes/request/http/body"]
    assert reads_masked_input({"request": {"headers": None}}, masked) == ["/request/headers/x-user-email"]
    assert reads_masked_input(None, masked) == masked  # the policy reads the input whole
