"""Body facts, and every hostile body answered with the error code the policy turns into a status."""

import pytest

from llm_authz.facts.payload import extract_payload
from llm_authz.facts.request import from_check_request
from llm_authz.facts.routes import match_route
from tests.helpers import check_request


def payload(body, path="/v1/chat/completions", headers=None):
    facts = from_check_request(check_request(path=path, body=body, headers=headers))
    return extract_payload(facts, match_route("POST", facts.path))


def test_chat_facts():
    p = payload({
        "model": "gpt-4o", "stream": True, "max_completion_tokens": 300,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:..."}}]},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
    })
    assert p.error is None
    assert (p.model, p.stream, p.max_tokens, p.messages) == ("gpt-4o", True, 300, 2)
    assert p.roles == ["system", "user"]
    assert p.prompt_chars == len("be brief") + len("what is this?")
    assert p.has_images and p.tools == ["lookup"] and p.parsed
    assert p.estimated_tokens == (p.prompt_chars + 3) // 4 + 300


def test_anthropic_messages_with_system_and_max_tokens():
    p = payload({"model": "claude", "max_tokens": 1024, "system": "abc",
                 "messages": [{"role": "user", "content": "hello"}]}, path="/v1/messages")
    assert (p.model, p.max_tokens, p.prompt_chars) == ("claude", 1024, 8)


def test_responses_api_max_output_tokens_and_input_string():
    p = payload({"model": "gpt-4o", "input": "hey", "max_output_tokens": 50}, path="/v1/responses")
    assert (p.max_tokens, p.prompt_chars) == (50, 3)


def test_gemini_contents_and_generation_config():
    p = payload({"contents": [{"role": "user", "parts": [{"text": "hi"}, {"inline_data": {"mime_type": "image/png", "data": "AA=="}}]}],
                 "generationConfig": {"maxOutputTokens": 77}},
                path="/v1beta/models/gemini-1.5-pro:streamGenerateContent")
    assert p.error is None
    assert (p.max_tokens, p.messages, p.prompt_chars, p.has_images, p.stream) == (77, 1, 2, True, True)


def test_embeddings_list_input():
    p = payload({"model": "text-embed-3", "input": ["ab", "cde"]}, path="/v1/embeddings")
    assert p.prompt_chars == 5


def test_kserve_body_without_model_is_fine():
    p = payload({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
                path="/v2/models/fraud-scorer/infer")
    assert p.error is None and p.model is None


@pytest.mark.parametrize("body, code", [
    (b"{not json", "malformed_json"),
    (b'{"model": "a", "model": "b"}', "duplicate_key"),
    (b'{"model": "gpt-4o", "x": {"y": 1, "y": 2}}', "duplicate_key"),
    (b"[" * 5000 + b"]" * 5000, "too_deep"),
    (b'{"model": "gpt-4o", "a": ' + b"[" * 70 + b"]" * 70 + b"}", "too_deep"),
    (b'{"model": "gpt-4o", "a": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}", "too_deep"),  # objects only
    ("\ufeff".encode() + b'{"model": "gpt-4o"}', "malformed_json"),  # a byte-order mark is not JSON
    (b'{"model": "gpt-4o", "max_tokens": 1e999}', "number_out_of_range"),
    (b'{"model": "gpt-4o", "max_tokens": 123456789012345678901234567890}', "number_out_of_range"),
    (b'{"model": "gpt-4o", "t": NaN}', "malformed_json"),
    (b'{"model": "gpt-4o", "t": Infinity}', "malformed_json"),
    (b'{"model": "\xff\xfe"}', "invalid_utf8"),
    (b'{"model": "gpt-4o", "max_tokens": "100"}', "invalid_field"),
    (b'{"model": "gpt-4o", "max_tokens": -1}', "invalid_field"),
    (b'{"model": "gpt-4o", "max_tokens": true}', "invalid_field"),
    (b'{"model": "gpt-4o", "stream": "yes"}', "invalid_field"),
    (b'{"model": 42}', "invalid_field"),
    (b'["gpt-4o"]', "invalid_field"),
    (b'{"messages": []}', "missing_model"),
    (b'{"model": "gpt-4o"} trailing', "malformed_json"),
])
def test_hostile_bodies_get_an_error_code(body, code):
    p = payload(body)
    assert p.error == code, p.error_detail
    assert p.error_detail


def test_a_byte_order_mark_is_named_as_such():
    p = payload("\ufeff".encode() + b'{"model": "gpt-4o"}')
    assert (p.error, p.error_detail) == (
        "malformed_json", "invalid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)")


def test_wrong_content_type():
    p = payload(b'{"model": "gpt-4o"}', headers={"content-type": "text/plain"})
    assert p.error == "unsupported_content_type"


def test_json_with_charset_and_vendor_types_are_fine():
    assert payload(b'{"model": "m"}', headers={"content-type": "application/json; charset=utf-8"}).error is None
    assert payload(b'{"model": "m"}', headers={"content-type": "application/vnd.api+json"}).error is None


def test_empty_body_on_body_model_route():
    assert payload(b"").error == "missing_body"


def test_model_in_path_and_another_in_body():
    p = payload({"model": "other"}, path="/v2/models/fraud-scorer/infer")
    assert p.error == "model_mismatch"
    assert payload({"model": "fraud-scorer"}, path="/v2/models/fraud-scorer/infer").error is None


def test_body_cut_short_is_flagged_not_parsed():
    p = payload(b'{"model": "gpt-4o", "messages": [{"role": "us', headers={"x-envoy-auth-partial-body": "true",
                                                                          "content-length": "999999"})
    assert p.truncated and not p.parsed and p.error is None
    assert p.bytes == 999999


def test_size_is_content_length_when_given():
    p = payload({"model": "m"}, headers={"content-length": "70000"})
    assert p.bytes == 70000


def test_multipart_audio_reads_the_model_field():
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\nRIFF....\r\n--{boundary}--\r\n").encode()
    p = payload(body, path="/v1/audio/transcriptions",
                headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert p.error is None and p.model == "whisper-1"


def test_multipart_route_with_json_body_is_refused():
    p = payload({"model": "whisper-1"}, path="/v1/audio/transcriptions")
    assert p.error == "unsupported_content_type"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


_SIBLINGS = b"[" + b",".join([b"[]"] * 100) + b"]"  # many brackets, none deeper than 2


@pytest.mark.parametrize("body", [
    b'{"model": "gpt-4o", "a": ' + _SIBLINGS + b"}",
    b'{"model": "gpt-4o", "a": ' + _nested(63) + b', "b": ' + _SIBLINGS + b"}",  # 64 levels with the object
    b'{"model": "gpt-4o", "s": "' + b"[" * 100 + b'"}',  # brackets inside a string are text
    b'{"model": "gpt-4o", "s": "a\\"' + b"[" * 100 + b'", "t": "\\\\", "u": "' + b"{" * 100 + b'"}',
])
def test_bracket_heavy_bodies_within_the_depth_limit_are_read(body):
    p = payload(body)
    assert p.error is None, p.error_detail


@pytest.mark.parametrize("body", [
    b'{"model": "gpt-4o", "a": ' + _nested(64) + b', "b": ' + _SIBLINGS + b"}",  # 65 levels
    b'{"model": "gpt-4o", "s": "x", "a": ' + _nested(100_000) + b"}",  # far past the parser's recursion limit
    b'{"model": "gpt-4o", "s": "a\\"b\\\\", "a": ' + _nested(100_000) + b"}",
    b'{"model": "gpt-4o", "a": ' + b"[ " * 100_000 + b"]" * 100_000 + b"}",  # spaced out
    b'{"model": "gpt-4o", "a": ' + b"[[]," * 100_000 + b"[]" + b"]" * 100_000 + b"}",  # closing as it goes deeper
])
def test_a_body_nested_too_deep_is_too_deep_whatever_comes_before(body):
    p = payload(body)
    assert (p.error, p.error_detail) == ("too_deep", "JSON nested deeper than 64")


@pytest.mark.parametrize("body, code, detail", [
    (b'{"model": "gpt-4o", "max_tokens": 1e999}', "number_out_of_range", "number out of the double range"),
    (b'{"model": "gpt-4o", "' + b"k" * 70 + b'": 1, "' + b"K" * 70 + b'": 2}', "duplicate_key",
     "duplicate JSON key '" + "K" * 64 + "' (keys differing only in case count as one)"),
    (b'{"model": "gpt-4o", "\\ud800": 1, "\\ud800": 2}', "duplicate_key",
     "duplicate JSON key '?' (keys differing only in case count as one)"),
])
def test_error_details_the_client_reads(body, code, detail):
    p = payload(body)
    assert (p.error, p.error_detail) == (code, detail)


@pytest.mark.parametrize("content, chars, images", [
    ("hello", 5, False),
    (["ab", "cde"], 5, False),
    ([{"type": "text", "text": "ab"}, {"type": "text", "text": "cde"}], 5, False),
    ([{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}], 0, True),
    ([{"type": "image_url"}], 0, True),
    ([{"type": "image", "source": {"type": "base64", "data": "AA=="}}], 0, True),  # Anthropic
    ([{"type": "input_image", "image_url": "https://x.example/a.png"}], 0, True),  # Responses API
    ([{"type": "input_image", "file_id": "file-1"}], 0, True),
    ([{"image_url": {"url": "https://x.example/a.png"}}], 0, True),  # no type, an image_url all the same
    ([{"inlineData": {"mimeType": "image/png", "data": "AA=="}}], 0, True),  # Gemini, camelCase
    ([{"inline_data": {"mime_type": "audio/wav", "data": "AA=="}}], 0, False),
    ([{"type": "text", "text": "ab"}, {"type": "input_text", "text": "c"}], 3, False),
])
def test_prompt_characters_and_images_in_message_content(content, chars, images):
    p = payload({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
    assert (p.error, p.prompt_chars, p.has_images) == (None, chars, images)


def test_an_unread_body_keeps_only_its_size_and_media_type():
    from llm_authz.facts.payload import unread_payload

    def unread(body: bytes, headers: dict):
        return unread_payload(from_check_request(check_request(body=body, headers=headers)), "not read: why")

    p = unread(b'{"model": "gpt-4o"}', {"content-type": "Application/JSON; charset=utf-8; x=y"})
    assert (p.bytes, p.content_type, p.error, p.error_detail) == (19, "application/json", "body_not_read",
                                                                  "not read: why")
    assert unread(b'{"model"', {"content-length": "70000"}).bytes == 70000  # cut short: the declared size
    empty = unread(b"", {})
    assert (empty.bytes, empty.content_type) == (0, "")


def test_roles_are_listed_once_each_cut_to_32_characters_and_only_strings():
    long_role = "r" * 40
    p = payload({"model": "gpt-4o", "messages": [{"role": long_role, "content": "a"}, {"role": "r" * 32 + "x", "content": "b"},
                                                 {"role": 5, "content": "c"}, {"role": "user", "content": "d"}]})
    assert p.error is None and p.roles == ["r" * 32, "user"]


@pytest.mark.parametrize("content_type, parsed", [
    ("application/json", True), ("application/vnd.api+json", True), ("application/merge-patch+json", True),
    ("text/plain", False), ("application/jsonp", False),
])
def test_a_body_on_a_route_without_a_model_is_parsed_only_when_it_is_json(content_type, parsed):
    p = payload(b'{"a": 1}', path="/people", headers={"content-type": content_type})
    assert (p.error, p.parsed, p.body if parsed else None) == (None, parsed, {"a": 1} if parsed else None)


@pytest.mark.parametrize("number, error", [
    (b"-9223372036854775808", None), (b"18446744073709551615", None),  # the 64-bit range, both ends
    (b"-9223372036854775809", "integer beyond the 64-bit range"),
    (b"18446744073709551616", "integer beyond the 64-bit range"),
    (b"1" + b"0" * 40, "integer beyond the 64-bit range"),
])
def test_integers_are_read_within_the_64_bit_range(number, error):
    p = payload(b'{"model": "gpt-4o", "seed": ' + number + b"}")
    assert (p.error_detail, p.error) == (error, "number_out_of_range" if error else None)


@pytest.mark.parametrize("body, path, facts", [
    ({"model": "m", "messages": [{"role": "user", "content": "ab"}, "not a message"],
      "system": "cde", "instructions": "f"}, None, (2, ["user"], 6, False)),
    ({"contents": [{"parts": [{"text": "ab"}]}, {"role": "model", "parts": [{"text": "c"}]}, 7],
      "systemInstruction": {"parts": [{"text": "de"}]}}, "/v1beta/models/gemini-1.5-pro:generateContent",
     (3, ["user", "model"], 5, False)),
    ({"model": "m", "prompt": "abc"}, "/v1/completions", (0, [], 3, False)),
    ({"contents": [{"parts": [{"inline_data": {"mime_type": "image/png", "data": "AA=="}}]}],
      "systemInstruction": {"parts": [{"text": "ab"}]}, "instructions": ["c", {"content": "de"}]},
     "/v1beta/models/gemini-1.5-pro:generateContent", (1, ["user"], 5, True)),  # an image, then more text
    ({"contents": [{"parts": [{"text": "a"}]}], "system_instruction": {"parts": [{"text": "bc"}, {"text": "d"}]}},
     "/v1beta/models/gemini-1.5-pro:generateContent", (1, ["user"], 4, False)),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "contents": [{"parts": []}, {"parts": []}]}, None,
     (3, ["user"], 1, False)),  # both spellings of a conversation count
    ({"model": "m", "input": ["ab", {"role": "user", "content": "cd"}, {"type": "input_text", "text": "e"},
                              {"type": "input_image", "image_url": "https://x.example/a.png"}, 5]},
     "/v1/responses", (0, [], 5, True)),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "image": "AA=="}, None, (1, ["user"], 1, True)),
    ({"model": "m", "system": [{"type": "text", "text": "abc"}], "messages": []}, "/v1/messages", (0, [], 3, False)),
])
def test_conversation_facts_from_every_api_shape(body, path, facts):
    p = payload(body, path=path or "/v1/chat/completions")
    assert p.error is None, p.error_detail
    assert (p.messages, p.roles, p.prompt_chars, p.has_images) == facts


def test_tool_names_from_every_api_shape():
    tools = [{"type": "function", "function": {"name": "lookup"}}, {"name": "get_weather", "input_schema": {}},
             {"type": "web_search"}, "not a tool", {"function": {"name": 5}},
             {"functionDeclarations": [{"name": "a"}, {"name": 1}, "x"]}, {"function_declarations": [{"name": "b"}]},
             {"name": "n" * 200}, {"functionDeclarations": [{"name": "d" * 200}]}]
    p = payload({"model": "gpt-4o", "messages": [], "tools": tools})
    assert p.error is None and p.tools == ["lookup", "get_weather", "web_search", "a", "b", "n" * 128, "d" * 128]


@pytest.mark.parametrize("headers, truncated, size", [
    ({"x-envoy-auth-partial-body": " TRUE "}, True, None),  # Envoy's flag, in any case and spacing
    ({"x-envoy-auth-partial-body": "false"}, False, None),
    ({"content-length": "41"}, True, 41),  # more declared than arrived
    ({"content-length": "40"}, False, 40),
    ({"content-length": "9" * 15}, True, int("9" * 15)),
    ({"content-length": "9" * 16}, False, None),  # too long to be a length: ignored
])
def test_a_body_is_cut_short_when_envoy_or_its_length_says_so(headers, truncated, size):
    body = b'{"model": "gpt-4o", "messages": [], "a":1}'
    body = body[:40]
    facts = from_check_request(check_request(body=body, headers={"content-length": None, **headers}))
    p = extract_payload(facts, match_route(facts.method, facts.path))
    assert p.truncated == truncated and p.bytes == (size if size is not None else (len(body) + 1 if truncated else len(body)))


def test_an_empty_json_body_on_a_route_without_a_model_is_no_error():
    p = payload(b"", path="/people", headers={"content-type": "application/json"})
    assert (p.error, p.parsed) == (None, False)
