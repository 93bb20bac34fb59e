"""Every route family names the model and operation a user expects."""

import pytest

from llm_authz.facts.routes import READ_OPERATIONS, api_family, match_route


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
    ("PUT", "/v1/models"),
    ("DELETE", "/v1/models/gpt-4o"),
    ("GET", "/v1/models/x/other"),
    ("GET", "/v2/models/x/infer"),
    ("GET", "/v2/health"),
    ("GET", "/v1beta/models/g:generateContent"),
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


ANTHROPIC = {"anthropic-version": "2023-06-01"}
GOOGLE = {"x-goog-api-client": "google-genai-sdk/1"}


@pytest.mark.parametrize(
    "path, headers, family, operation, model, version",
    [
        ("/v1/models", {}, "openai", "list_models", None, None),
        ("/v1/models/", {}, "openai", "list_models", None, None),
        ("/v1/models", ANTHROPIC, "anthropic", "list_models", None, None),
        ("/v1/models", GOOGLE, "gemini", "list_models", None, None),
        ("/v1beta/models", {}, "gemini", "list_models", None, None),
        ("/v1/models/gpt-4o", {}, "openai", "model_metadata", "gpt-4o", None),
        ("/v1/models/claude-x", ANTHROPIC, "anthropic", "model_metadata", "claude-x", None),
        ("/v1beta/models/gemini-1.5-pro", {}, "gemini", "model_metadata", "gemini-1.5-pro", None),
        ("/v1/models/gemini-1.5-pro", GOOGLE, "gemini", "model_metadata", "gemini-1.5-pro", None),
        ("/v1/models/resnet50/metadata", {}, "tfserving", "model_metadata", "resnet50", None),
        ("/v1/models/resnet50/versions/2", {}, "tfserving", "model_metadata", "resnet50", "2"),
        ("/v1/models/resnet50/labels/stable/metadata", {}, "tfserving", "model_metadata", "resnet50", "stable"),
        ("/v2/models/fraud-scorer", {}, "kserve", "model_metadata", "fraud-scorer", None),
        ("/v2/models/fraud-scorer/ready", {}, "kserve", "model_metadata", "fraud-scorer", None),
        ("/v2/models/fraud-scorer/versions/3/ready", {}, "kserve", "model_metadata", "fraud-scorer", "3"),
        ("/v2/models/my%20model", {}, "kserve", "model_metadata", "my model", None),
        ("/v2", {}, "kserve", "server_metadata", None, None),
        ("/v2/health/live", {}, "kserve", "server_metadata", None, None),
        ("/v2/health/ready", {}, "kserve", "server_metadata", None, None),
    ],
)
def test_read_only_routes(path, headers, family, operation, model, version):
    route = match_route("GET", path, headers)
    assert route is not None and route.operation in READ_OPERATIONS
    assert (route.family, route.operation, route.model, route.version) == (family, operation, model, version)
    assert route.body_format == "none"


@pytest.mark.parametrize("path", [
    "/v1/models/gemini-1.5-pro:generateContent",
    "/v1/models/..",
    "/v1/models/a%2fb",
    "/v2/models/%2e%2e/ready",
    "/v2/models/m/versions/1%252f",
    "/v1/models/resnet50/labels/a%5cb/metadata",
    "/v1beta/models/x%00",
])
def test_read_only_model_parts_are_validated_like_inference_ones(path):
    assert match_route("GET", path, GOOGLE) is None
    assert match_route("GET", path, {}) is None


@pytest.mark.parametrize("method, path, headers, family", [
    ("POST", "/v1/messages/count_tokens", {}, "anthropic"),
    ("GET", "/v1/files", ANTHROPIC, "anthropic"),
    ("POST", "/v1beta/models/g:countTokens", {}, "gemini"),
    ("POST", "/v1/models/g:embedContent", GOOGLE, "gemini"),
    ("POST", "/v2/repository/index", {}, "kserve"),
    ("POST", "/v1/models/resnet50:delete", {}, "tfserving"),
    ("POST", "/v1/files", {}, "openai"),
    ("GET", "/admin", {}, "openai"),
])
def test_a_path_naming_no_route_is_answered_in_the_api_it_speaks(method, path, headers, family):
    assert match_route(method, path, headers) is None
    assert api_family(None, path, headers) == family


def test_the_family_of_a_route_is_the_routes():
    route = match_route("POST", "/v1/messages", {})
    assert api_family(route, "/v1/messages", GOOGLE) == "anthropic"
