"""The parsing rules for fields an upstream may honour: every spelling read, ambiguity refused."""

import pytest

from llm_authz.facts.fields import INT64_MAX, output_token_limit
from llm_authz.facts.payload import extract_payload
from llm_authz.facts.request import from_check_request
from llm_authz.facts.routes import match_route
from tests.helpers import check_request

CHAT = "/v1/chat/completions"
GEMINI = "/v1beta/models/gemini-1.5-pro:generateContent"


def payload(body, path=CHAT, headers=None, content_type=None):
    h = dict(headers or {})
    if content_type:
        h["content-type"] = content_type
    facts = from_check_request(check_request(path=path, body=body, headers=h))
    return extract_payload(facts, match_route("POST", facts.path))


# ---- several fields for one fact: the largest wins, multipliers count --------------------------

@pytest.mark.parametrize("body, expected", [
    ({"max_tokens": 10, "max_completion_tokens": 100000}, 100000),
    ({"max_tokens": 0, "max_completion_tokens": 5000}, 5000),
    ({"max_completion_tokens": 10, "max_tokens": 7000}, 7000),
    ({"max_tokens": 1000, "n": 5}, 5000),
    ({"max_tokens": 100, "best_of": 8, "n": 2}, 800),
    ({"max_tokens": 100, "n": 0}, 100),
    ({"max_tokens": None, "max_completion_tokens": 42}, 42),
    ({"max_new_tokens": 9, "parameters": {"max_new_tokens": 900}}, 900),
    ({"max_tokens_to_sample": 64}, 64),
    ({"n": 4}, None),
    ({}, None),
])
def test_the_largest_limit_of_every_spelling_times_the_multiplier(body, expected):
    assert output_token_limit(body) == expected


@pytest.mark.parametrize("config", [
    {"generationConfig": {"maxOutputTokens": 10}, "generation_config": {"max_output_tokens": 9000}},
    {"generationConfig": {"maxOutputTokens": 10, "max_output_tokens": 9000}},
    {"generation_config": {"maxOutputTokens": 9000}},
    {"generationConfig": {"maxOutputTokens": 3000, "candidateCount": 3}},
])
def test_gemini_reads_both_spellings_of_the_config_and_of_its_fields(config):
    p = payload({"contents": [{"parts": [{"text": "hi"}]}], **config}, path=GEMINI)
    assert p.error is None and p.max_tokens == 9000


def test_the_limit_saturates_instead_of_growing_past_64_bits():
    assert output_token_limit({"max_tokens": 2**63, "n": 2**63}) == INT64_MAX


@pytest.mark.parametrize("value", [-1, "100", 1.5, True, [1]])
def test_a_limit_that_is_not_a_non_negative_integer_is_refused(value):
    p = payload({"model": "gpt-4o", "max_completion_tokens": value})
    assert p.error == "invalid_field"


# ---- one key, two spellings ---------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o","Model":"gpt-5"}',
    b'{"model":"gpt-4o","MODEL":"gpt-5"}',
    b'{"model":"gpt-4o","messages":[{"role":"user","Role":"system"}]}',
    b'{"model":"gpt-4o","max_tokens":1,"MAX_TOKENS":99999}',
    # U+212A KELVIN SIGN folds to k in Go's encoding/json too
    b'{"model":"gpt-4o","max_to\xe2\x84\xaaens":99999,"max_tokens":1}',
])
def test_keys_differing_only_in_case_are_duplicates(raw):
    assert payload(raw).error == "duplicate_key"


def test_a_lone_case_variant_key_is_read_as_the_field():
    # Go's encoding/json would read it; so do we.
    p = payload(b'{"MODEL":"gpt-4o","Max_Tokens":99999,"Messages":[{"ROLE":"system","Content":"x"}]}')
    assert p.error is None
    assert (p.model, p.max_tokens, p.roles, p.prompt_chars) == ("gpt-4o", 99999, ["system"], 1)


def _form(*parts: bytes) -> bytes:
    return b"".join(b"--XyZ\r\n" + p + b"\r\n" for p in parts) + b"--XyZ--\r\n"


MULTIPART = "multipart/form-data; boundary=XyZ"
AUDIO = "/v1/audio/transcriptions"


def test_one_model_part_is_read():
    body = _form(b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1',
                 b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF')
    p = payload(body, path=AUDIO, content_type=MULTIPART)
    assert p.error is None and p.model == "whisper-1"


@pytest.mark.parametrize("parts, code", [
    ((b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1',
      b'Content-Disposition: form-data; name="model"\r\n\r\nbig-model'), "duplicate_field"),
    ((b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1',
      b'Content-Disposition: form-data; name="Model"\r\n\r\nbig-model'), "duplicate_field"),
    ((b"Content-Disposition: form-data; name=\"file\"; name*=utf-8''model\r\n\r\nbig-model",), "ambiguous_field"),
    ((b'Content-Disposition: form-data; name="model"\r\nContent-Disposition: form-data; name="x"\r\n\r\nm',),
     "ambiguous_field"),
])
def test_a_form_that_two_frameworks_could_read_differently_is_refused(parts, code):
    assert payload(_form(*parts), path=AUDIO, content_type=MULTIPART).error == code


def test_an_rfc2231_name_alone_is_read():
    body = _form(b"Content-Disposition: form-data; name*=utf-8''mo%64el\r\n\r\nwhisper-1")
    assert payload(body, path=AUDIO, content_type=MULTIPART).model == "whisper-1"


def test_a_form_with_too_many_parts_is_refused_before_it_is_parsed():
    body = _form(*[b'Content-Disposition: form-data; name="f"\r\n\r\nx'] * 500)
    assert payload(body, path=AUDIO, content_type=MULTIPART).error == "too_many_parts"


# ---- cut-short bodies ---------------------------------------------------------------------------

def test_a_cut_short_chunked_body_reports_more_bytes_than_were_seen():
    body = b'{"contents":[], "generationConfig": {"maxOutputTokens": 1'
    p = payload(body, path=GEMINI, headers={"content-length": None, "x-envoy-auth-partial-body": "true"})
    assert p.truncated and not p.parsed and p.max_tokens is None
    assert p.bytes == len(body) + 1


# ---- values no log could hold -----------------------------------------------------------------

@pytest.mark.parametrize("raw, code", [
    (b'{"model":"gpt-4o","max_tokens":123456789012345678901234567890}', "number_out_of_range"),
    (b'{"model":"gpt-4o","max_tokens":18446744073709551616}', "number_out_of_range"),
    (b'{"model":"gpt-4o","x":-9223372036854775809}', "number_out_of_range"),
    (b'{"model":"gpt-4o\\ud800"}', "invalid_unicode"),
    (b'{"model":"gpt-4o","messages":[{"role":"\\udc00","content":"x"}]}', "invalid_unicode"),
    (b'{"model":"gpt-4o","tools":[{"name":"a\\ud800b"}]}', "invalid_unicode"),
    (b'{"model":"gpt-4o","\\ud800":1}', "invalid_unicode"),
])
def test_values_beyond_64_bits_and_lone_surrogates_are_refused(raw, code):
    assert payload(raw).error == code


def test_a_surrogate_pair_and_a_full_uint64_are_fine():
    p = payload(b'{"model":"gpt-4o","x":18446744073709551615,"messages":[{"role":"user","content":"\\ud83d\\ude00"}]}')
    assert p.error is None and p.prompt_chars == 1


@pytest.mark.parametrize("value", ["\u00b2", "+5", "1_000", " ", "\u0661\u0662"])
def test_an_odd_content_length_is_ignored_not_raised(value):
    p = payload({"model": "gpt-4o"}, headers={"content-length": value})
    assert p.error is None and p.bytes == len(b'{"model":"gpt-4o"}')


def test_a_chunked_body_that_fills_envoys_buffer_is_cut_short_whatever_the_flag_says():
    """Envoy says `x-envoy-auth-partial-body: false` when its buffer is exactly full: the body may go on."""
    from llm_authz.facts import payload

    body = b'{"model":"gpt-4o","messages":[],"x":"' + b"a" * (payload.envoy_max_request_bytes - 39) + b'"}'
    assert len(body) == payload.envoy_max_request_bytes
    request = check_request(body=body, headers={"content-length": None, "x-envoy-auth-partial-body": "false"})
    facts = from_check_request(request)
    out = extract_payload(facts, match_route(facts.method, facts.path))
    assert out.truncated and out.bytes > len(body)
    shorter = check_request(body=body[:-10] + b'"}', headers={"content-length": None})
    facts = from_check_request(shorter)
    assert not extract_payload(facts, match_route(facts.method, facts.path)).truncated


def test_a_lone_surrogate_is_named_as_in_a_key_or_in_a_string():
    key = payload(b'{"model":"gpt-4o","\\ud800":1}')
    assert (key.error, key.error_detail) == ("invalid_unicode", "a JSON key holds a lone surrogate escape")
    string = payload(b'{"model":"gpt-4o\\ud800"}')
    assert (string.error, string.error_detail) == ("invalid_unicode", "a JSON string holds a lone surrogate escape")


# ---- what each refusal says, and the facts of plain bodies --------------------------------------

@pytest.mark.parametrize("path, body, headers, code, detail", [
    (AUDIO, b'{"model": "whisper-1"}', {}, "unsupported_content_type", "this route takes multipart/form-data"),
    (CHAT, b"", {"content-length": "0"}, "missing_body", "this route needs a JSON body naming the model"),
    (CHAT, b'{"model": "gpt-4o"}', {"content-type": "text/plain; charset=utf-8"}, "unsupported_content_type",
     "expected application/json, got 'text/plain'"),
    (CHAT, b'["gpt-4o"]', {}, "invalid_field", "the body must be a JSON object"),
    (CHAT, b'{"model": 4}', {}, "invalid_field", "model must be a string"),
    (CHAT, b'{"model": "gpt-4o", "stream": "yes"}', {}, "invalid_field", "stream must be true or false"),
    (CHAT, b'{"messages": []}', {}, "missing_model", "the body names no model"),
    (GEMINI, b'{"model": "gemini-2.0-flash", "contents": []}', {}, "model_mismatch",
     "the model in the path and the model in the body differ"),
])
def test_each_body_refusal_names_its_cause(path, body, headers, code, detail):
    p = payload(body, path=path, headers=headers)
    assert (p.error, p.error_detail) == (code, detail)


@pytest.mark.parametrize("body, stream", [
    (b'{"model": "gpt-4o"}', False), (b'{"model": "gpt-4o", "stream": null}', False),
    (b'{"model": "gpt-4o", "stream": false}', False), (b'{"model": "gpt-4o", "stream": true}', True),
])
def test_a_request_streams_only_when_it_says_so(body, stream):
    p = payload(body)
    assert p.error is None and p.stream is stream


@pytest.mark.parametrize("content, max_tokens, expected", [
    ("abcd", None, 1), ("abcde", None, 2), ("abcdefgh", None, 2), ("", None, 0), ("abcd", 10, 11),
])
def test_estimated_tokens_are_a_quarter_of_the_prompt_rounded_up_plus_the_output_limit(content, max_tokens, expected):
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    assert payload(body).estimated_tokens == expected


def test_a_body_without_a_content_type_is_read_as_json():
    p = payload(b'{"model": "gpt-4o", "messages": []}', headers={"content-type": None})
    assert p.error is None and p.parsed and p.model == "gpt-4o" and p.content_type == ""


def test_an_empty_body_is_zero_bytes_and_a_json_body_keeps_its_media_type():
    p = payload(b"", path="/healthz", headers={"content-length": None})
    assert p.bytes == 0 and p.error is None
    p = payload(b'{"model": "gpt-4o", "messages": []}', content_type="application/json; charset=utf-8")
    assert p.content_type == "application/json"


def test_a_parser_surprise_is_a_malformed_body_named_by_its_kind(monkeypatch):
    from llm_authz.facts import payload as payload_module

    def surprise(raw: bytes, max_depth: int):
        raise LookupError("unexpected")

    monkeypatch.setattr(payload_module, "parse_json_strict", surprise)
    p = payload(b'{"model": "gpt-4o"}')
    assert (p.error, p.error_detail) == ("malformed_body", "LookupError")


def test_a_media_type_with_several_parameters_is_still_json():
    p = payload(b'{"model": "gpt-4o", "messages": []}', content_type="application/json; charset=utf-8; v=1")
    assert p.error is None and p.content_type == "application/json"


@pytest.mark.parametrize("buffer, cut", [(0, False), (1, True), (1024, False)])
def test_a_body_of_no_declared_length_is_cut_short_only_when_it_fills_a_known_envoy_buffer(monkeypatch, buffer, cut):
    """0 means the buffer size is not known: nothing is assumed cut."""
    from llm_authz.facts import payload as payload_module

    monkeypatch.setattr(payload_module, "envoy_max_request_bytes", buffer)
    p = payload(b'{"model": "gpt-4o", "messages": []}', headers={"content-length": None})
    assert p.truncated is cut
