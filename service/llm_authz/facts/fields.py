"""Which body fields feed a fact, read the way the most generous upstream would read them.

A gateway cannot know which server sits behind a route, and servers disagree: vLLM honours
`max_completion_tokens` over `max_tokens`, Go's `encoding/json` matches keys without regard to
case, protobuf JSON accepts `maxOutputTokens` and `max_output_tokens` alike. So a fact is read
from every spelling any upstream of any family accepts, keys compared case-insensitively, and when
several fields set it the one that lets the upstream do the most wins. docs/payload-fields.md
lists the fields per API family.
"""

from __future__ import annotations

from typing import Any

INT64_MAX = 2**63 - 1

# Output-token limits, casefolded. OpenAI chat/completions/responses, Anthropic (and its legacy
# completions), Gemini (both JSON spellings), Hugging Face TGI and KServe/Triton generate.
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "maxoutputtokens",
                      "max_new_tokens", "max_tokens_to_sample")
# Fields that multiply the output: n choices, best_of candidates generated server-side,
# Gemini's candidateCount, TGI's num_return_sequences.
MULTIPLIER_FIELDS = ("n", "best_of", "candidatecount", "candidate_count", "num_return_sequences")
# Objects nested in the body that carry the same settings (Gemini's generation config in both
# spellings, TGI/KServe/Triton `parameters`, vLLM `sampling_params`).
NESTED_CONFIGS = ("generationconfig", "generation_config", "parameters", "sampling_params")


class FieldError(ValueError):
    """A field an upstream would honour holds a value that cannot be read strictly."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def folded(obj: dict[str, Any]) -> dict[str, Any]:
    """The object keyed by casefolded names. The JSON parser already refused bodies in which two
    keys fold to the same name, so no value is lost here."""
    return {k.casefold(): v for k, v in obj.items()}


def get_field(obj: dict[str, Any], name: str) -> Any:
    """obj[name] compared case-insensitively (`name` is casefolded); None when absent."""
    if name in obj:
        return obj[name]
    for key, value in obj.items():
        if key.casefold() == name:
            return value
    return None


def _count(value: Any, key: str) -> int | None:
    if value is None:  # null: the upstream's default, as when the field is absent
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError("invalid_field", f"{key} must be a non-negative integer")
    return value


def _sources(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    top = folded(body)
    out = [("", top)]
    for name in NESTED_CONFIGS:
        nested = top.get(name)
        if isinstance(nested, dict):
            out.append((name + ".", folded(nested)))
    return out


def output_token_limit(body: dict[str, Any]) -> int | None:
    """The largest number of output tokens any field of the body lets the upstream generate:
    the largest limit of every spelling, times the largest multiplier (n, best_of...). None when
    no field sets a limit (the upstream's default applies). Saturates at 2**63-1."""
    limits: list[int] = []
    multiplier = 1
    for prefix, obj in _sources(body):
        for key in TOKEN_LIMIT_FIELDS:
            if key in obj and (n := _count(obj[key], prefix + key)) is not None:
                limits.append(n)
        for key in MULTIPLIER_FIELDS:
            if key in obj and (n := _count(obj[key], prefix + key)) is not None:
                multiplier = max(multiplier, n)
    if not limits:
        return None
    return min(max(limits) * multiplier, INT64_MAX)
