"""``GenerativeModel``: call a base or tuned model, shaped like Vertex's ``GenerativeModel``.

Embedded, the model loads in this process. After ``tunery.init(...)`` it is a model on the server
(``models/ID`` or a catalog id), called over HTTP; the answers have the same shape either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.data.formats import Example, parse_example, user_example
from tunery.errors import DatasetError
from tunery.models.catalog import DEFAULT_MODEL
from tunery.sdk import client as remote
from tunery.serving import gemini
from tunery.serving.gemini import GenerationConfig

if TYPE_CHECKING:
    from tunery.serving.engine import Engine


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
    logprobs_result: dict[str, Any] | None = None  # Gemini's logprobsResult, when response_logprobs was asked
    avg_logprobs: float | None = None
    weights: str | None = None  # in this process: the weights form that answered (remote: the server's own)


class GenerativeModel:
    """A catalog id, a local model directory or a tuned model directory, loaded once; after ``tunery.init``,
    a model on the server: ``models/ID`` (``job.tuned_model_name``), a bare id, or a catalog id.

    In this process the model answers with ``weights`` (default: the form ``tunery serve`` holds on this machine,
    so what is tried here is what is served); ``self.weights`` names the form (None when remote)."""

    def __init__(
        self, model_name: str | Path = DEFAULT_MODEL, system_instruction: str | None = None, weights: str | None = None
    ) -> None:
        self.model_name = str(model_name)
        self.system_instruction = system_instruction
        self._client = remote.current()
        self._engine: Engine | None = None
        self.weights: str | None = None
        if self._client is not None:
            self._model_id = remote.model_id(self.model_name)
        else:
            from tunery.serving.engine import Engine, served_weights  # torch: only for a model in this process

            self._engine = Engine(model_name, weights=weights or served_weights())
            self.weights = self._engine.weights

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
        if self._engine is not None:  # in this process: a fileData path is read against the working directory
            from tunery.serving.multimodal import inline_media

            example = inline_media(example, Path.cwd())
        return example

    def generate_content(
        self, contents: str | list[dict[str, Any]], generation_config: GenerationConfig | dict[str, Any] | None = None
    ) -> GenerationResponse:
        config = gemini.generation_config(generation_config, "generation_config")
        request = self._request(contents)
        if self._engine is None:
            body = {**self._body(contents), "generationConfig": _config_json(config)}
            return _response(self._remote().generate_content(self._model_id, body))
        result = self._engine.generate(request, config)
        usage = UsageMetadata(result.prompt_tokens, result.output_tokens)
        found = gemini.logprobs_result(result.logprobs) if result.logprobs is not None else {}
        return GenerationResponse(
            result.text,
            result.finish_reason,
            usage,
            result.latency_ms,
            found.get("logprobsResult"),
            found.get("avgLogprobs"),
            self.weights,
        )

    def count_tokens(self, contents: str | list[dict[str, Any]]) -> int:
        request = self._request(contents)
        if self._engine is None:
            return self._remote().count_tokens(self._model_id, self._body(contents))
        return self._engine.count_tokens(request)

    def _remote(self) -> remote.Client:
        assert self._client is not None
        return self._client

    def _body(self, contents: str | list[dict[str, Any]]) -> dict[str, Any]:
        """The REST request's ``contents`` and ``systemInstruction`` (already checked by ``_request``)."""
        turns = [{"role": "user", "parts": [{"text": contents}]}] if isinstance(contents, str) else contents
        body: dict[str, Any] = {"contents": turns}
        if self.system_instruction:
            body["systemInstruction"] = {"parts": [{"text": self.system_instruction}]}
        return body


def _config_json(config: GenerationConfig) -> dict[str, Any]:
    """Gemini's ``generationConfig`` JSON for ``config``."""
    values = {
        "maxOutputTokens": config.max_output_tokens,
        "temperature": config.temperature,
        "topP": config.top_p,
        "topK": config.top_k,
        "stopSequences": list(config.stop_sequences),
        "seed": config.seed,
        "responseMimeType": config.response_mime_type,  # None: the model's own (a tuned model's kept label set)
        "responseSchema": config.response_schema,
        "responseJsonSchema": config.response_json_schema,
        "responseLogprobs": config.response_logprobs or None,
        "logprobs": config.logprobs,
    }
    return {k: v for k, v in values.items() if v is not None}


def _response(answer: dict[str, Any]) -> GenerationResponse:
    """A ``GenerationResponse`` from a ``generateContent`` answer (its first candidate)."""
    candidate = (answer.get("candidates") or [{}])[0]
    parts = (candidate.get("content") or {}).get("parts") or []
    usage = answer.get("usageMetadata") or {}
    return GenerationResponse(
        text="".join(part.get("text", "") for part in parts),
        finish_reason=candidate.get("finishReason", "STOP"),
        usage_metadata=UsageMetadata(usage.get("promptTokenCount", 0), usage.get("candidatesTokenCount", 0)),
        latency_ms=float(answer.get("latencyMs", 0.0)),
        logprobs_result=candidate.get("logprobsResult"),
        avg_logprobs=candidate.get("avgLogprobs"),
    )
