"""``GenerativeModel``: call a base or tuned model, shaped like Vertex's ``GenerativeModel``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.data.formats import Example, parse_example, user_example
from tunery.errors import DatasetError
from tunery.models.catalog import DEFAULT_MODEL
from tunery.serving.engine import Engine, GenerationConfig


@dataclass(frozen=True)
class UsageMetadata:
    prompt_token_count: int
    candidates_token_count: int

    @property
    def total_token_count(self) -> int:
        return self.prompt_token_count + self.candidates_token_count


@dataclass(frozen=True)
class GenerationResponse:
    text: str
    finish_reason: str
    usage_metadata: UsageMetadata
    latency_ms: float


class GenerativeModel:
    """A catalog id, a local model directory or a tuned model directory, loaded once."""

    def __init__(self, model_name: str | Path = DEFAULT_MODEL, system_instruction: str | None = None) -> None:
        self.model_name = str(model_name)
        self.system_instruction = system_instruction
        self._engine = Engine(model_name)

    def _request(self, contents: str | list[dict[str, Any]]) -> Example:
        if isinstance(contents, str):
            return user_example(contents, self.system_instruction)
        obj: dict[str, Any] = {"contents": contents}
        if self.system_instruction:
            obj["systemInstruction"] = {"parts": [{"text": self.system_instruction}]}
        example, problems = parse_example(obj, require_model_turn=False)
        if example is None:
            raise DatasetError("invalid contents: " + "; ".join(f"{field}: {message}" for field, message in problems))
        if example.turns[-1].role != "user":
            raise DatasetError("invalid contents: the last turn must be the user's")
        return example

    def generate_content(
        self, contents: str | list[dict[str, Any]], generation_config: GenerationConfig | dict[str, Any] | None = None
    ) -> GenerationResponse:
        config = _config(generation_config)
        result = self._engine.generate(self._request(contents), config)
        usage = UsageMetadata(result.prompt_tokens, result.output_tokens)
        return GenerationResponse(result.text, result.finish_reason, usage, result.latency_ms)

    def count_tokens(self, contents: str | list[dict[str, Any]]) -> int:
        return self._engine.count_tokens(self._request(contents))


_CONFIG_NAMES = {
    "max_output_tokens": "max_output_tokens",
    "maxOutputTokens": "max_output_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "topP": "top_p",
    "top_k": "top_k",
    "topK": "top_k",
    "stop_sequences": "stop_sequences",
    "stopSequences": "stop_sequences",
    "seed": "seed",
}


def _config(value: GenerationConfig | dict[str, Any] | None) -> GenerationConfig:
    if value is None or isinstance(value, GenerationConfig):
        return value or GenerationConfig()
    unknown = sorted(set(value) - set(_CONFIG_NAMES))
    if unknown:
        raise DatasetError(f"generation_config: unknown field(s) {', '.join(unknown)}")
    kwargs = {_CONFIG_NAMES[k]: v for k, v in value.items()}
    if "stop_sequences" in kwargs:
        kwargs["stop_sequences"] = tuple(kwargs["stop_sequences"])
    return GenerationConfig(**kwargs)
