"""Every route family names the model and operation a user expects."""

import pytest

from llm_authz.facts.routes import match_route


@pytest.mark.parametrize(
    "path, family, operation, model, version",
    [
        ("/v1/chat/completions", "openai", "chat", None, None),
        ("/v1/completions", "openai", "completions", None, None),
        ("/v1/embeddings", "openai", "embeddings", None, None),
        ("/v1/responses", "openai", "responses", None, None),
        ("/v1/images/generations", "openai", "images", None, None),
        ("/v1/audio/transcriptions", "openai", "audio", None, None),
        ("/v1/audio/translations", "openai", "audio", None, None),
        ("/v1/audio/speech", "openai", "audio", None, None),
        ("/v1/moderations", "openai", "moderations", None, None),
        ("/v1/messages", "anthropic", "chat", None, None),
        ("/v2/models/fraud-scorer/infer", "kserve", "infer", "fraud-scorer", None),
        ("/v2/models/fraud-scorer/versions/3/infer", "kserve", "infer", "fraud-scorer", "3"),
        ("/v1/models/resnet50:predict", "tfserving", "predict", "resnet50", None),
        ("/v1/models/resnet50/versions/2:classify", "tfserving", "predict", "resnet50", "2"),
        ("/v1/models/resnet50/labels/stable:regress", "tfserving", "predict", "resnet50", "stable"),
        ("/v1beta/models/gemini-1.5-pro:generateContent", "gemini", "generate", "gemini-1.5-pro", None),
        ("/v1beta/models/gemini-1.5-pro:streamGenerateContent", "gemini", "generate", "gemini-1.5-pro", None),
    ],
)
def test_route_families(path, family, operation, model, version):
    route = match_route("POST", path)
    assert route is not None
    assert (route.family, route.operation, route.model, route.version) == (family, operation, model, version)
    assert route.model_source == ("path" if model else "body")


def test_gemini_streaming_route_streams():
    assert match_route("POST", "/v1beta/models/g:streamGenerateContent").stream
    assert not match_route("POST", "/v1beta/models/g:generateContent").stream


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/chat/completions"),
    ("POST", "/v1/models"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat"),
    ("POST", "/v2/models/x/infer/extra"),
    ("POST", "/v1/models/x:delete"),
    ("POST", "/admin"),
    ("POST", "/v2/models//infer"),
])
def test_paths_naming_no_operation_match_nothing(method, path):
    assert match_route(method, path) is None


def test_percent_encoded_model_names_are_decoded():
    assert match_route("POST", "/v2/models/my%20model/infer").model == "my model"


@pytest.mark.parametrize("path", [
    "/v2/models/fraud-scorer/versions/%2e%2e%2f/infer",
    "/v2/models/fraud-scorer/versions/..%2fother/infer",
    "/v2/models/fraud-scorer/versions/../infer",
    "/v2/models/fraud-scorer/versions/%2e/infer",
    "/v2/models/fraud-scorer/versions/1%252f/infer",
    "/v2/models/fraud-scorer/versions/1%00/infer",
    "/v2/models/fraud-scorer/versions/%ff/infer",
    "/v2/models/%2e%2e/infer",
    "/v2/models/a%5cb/infer",
    "/v1/models/resnet50/versions/%2e%2e:predict",
    "/v1/models/resnet50/labels/a%2fb:predict",
    "/v1/models/resnet50%3apredict:predict",
    "/v1beta/models/..%2fgemini:generateContent",
])
def test_model_and_version_parts_are_decoded_once_and_validated(path):
    assert match_route("POST", path) is None


def test_a_valid_encoded_version_is_decoded():
    assert match_route("POST", "/v2/models/m/versions/v%201/infer").version == "v 1"
