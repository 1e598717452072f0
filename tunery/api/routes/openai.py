"""OpenAI's shapes, for the ``openai`` client with ``base_url=URL + "/v1"``: thin translations onto the same handlers.

    POST /v1/chat/completions (stream: chat.completion.chunk events, then data: [DONE])   POST /v1/completions
    POST /v1/fine_tuning/jobs   GET /v1/fine_tuning/jobs[/{id}[/events|/checkpoints]]   POST .../{id}/cancel
    GET /v1/files/{id}/content (an upload's bytes, or a batch's output or error file; /v1/batches: batches.py)

A chat request becomes a Gemini generateContent body (system messages → ``systemInstruction``, ``assistant``
→ ``model``, ``response_format`` json_schema → ``responseMimeType``/``responseJsonSchema``) and goes through
``tunery.api.generation``; a fine-tuning job becomes a native ``POST /v1/tuningJobs`` body, so it is the same
job as ``tuningJobs/{id}`` (same id). ``/v1/models`` and ``/v1/files`` are shared with the Gemini shape: their
answers carry OpenAI's ``data`` list too (see ``openai_model`` and ``openai_file``). A request field that
would change the answer and that tunery cannot honour (``n`` > 1, tools, penalties, log probabilities) is a
400 naming it, never ignored.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from tunery.api import generation, limits, translate
from tunery.api.deps import SchedulerDep, SettingsDep, StoreDep, Tenant, wake_scheduler
from tunery.api.errors import ApiError, error_body, invalid, status_for
from tunery.api.routes import batches
from tunery.api.routes.models import SERVING_ERRORS
from tunery.api.schemas import ErrorResponse, FileId, Text
from tunery.errors import DatasetError, NotFoundError, TuneryError
from tunery.jobs.store import CANCELLED, CANCELLING, FAILED, PENDING, RUNNING, SUCCEEDED, Job, StoredFile
from tunery.models.tuned import kept_checkpoints
from tunery.serving import gemini

router = APIRouter(tags=["openai"])

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_URI_LENGTH)]
JobId = Annotated[str, Path(pattern=r"^[^\x00-\x1f\x7f]{1,128}$", description="The job id (tuningJobs/{id})")]
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
STATUSES = {
    PENDING: "queued",
    RUNNING: "running",
    CANCELLING: "running",
    SUCCEEDED: "succeeded",
    FAILED: "failed",
    CANCELLED: "cancelled",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request: every field at fault is named"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "No such job or model for this tenant"},
}
STREAM_RESPONSES = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "JSON, or SSE with stream"},
    **SERVING_ERRORS,
}


class OpenAIRequest(BaseModel):
    """An OpenAI request body: snake_case names as the client sends them; unknown fields refused by name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --- chat completions -------------------------------------------------------------------------------------


class ContentPart(OpenAIRequest):
    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: Text | None = None
    image_url: dict[str, Any] | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None
    refusal: Text | None = None


class ChatMessage(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | list[ContentPart] | None = Field(None, max_length=limits.MAX_PARTS)
    name: Annotated[str, StringConstraints(max_length=256)] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: Annotated[str, StringConstraints(max_length=256)] | None = None
    function_call: dict[str, Any] | None = None
    refusal: Text | None = None


class StreamOptions(OpenAIRequest):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class JsonSchemaFormat(OpenAIRequest):
    name: Annotated[str, StringConstraints(max_length=64)] = "response"
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


Stop = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Sampling(OpenAIRequest):
    """What chat and text completions share."""

    model: ModelName
    temperature: float | None = Field(None, ge=0, le=2, description="Default 0 (greedy), tunery's default.")
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=gemini.MAX_OUTPUT_TOKENS)
    stop: Stop | list[Stop] | None = None
    n: int | None = Field(None, ge=1, le=128, description="1 only")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="0 only")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="0 only")
    logprobs: bool | int | None = Field(None, description="Chat: each answer token's log probability. Completions: no")
    logit_bias: dict[str, float] | None = Field(None, description="empty only")
    response_format: ResponseFormat | None = Field(
        None, description='{"type": "text"}: free text, also for a tuned model that keeps a label set or schema'
    )
    user: Annotated[str, StringConstraints(max_length=256)] | None = Field(None, description="Accepted; no effect")


class ChatCompletionRequest(Sampling):
    """OpenAI's ``chat.completions.create``."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=limits.MAX_TURNS)
    max_completion_tokens: int | None = Field(None, ge=1, le=gemini.MAX_OUTPUT_TOKENS)
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: the top tokens per place")
    tools: list[dict[str, Any]] | None = Field(None, max_length=128, description="Not supported (400)")
    tool_choice: str | dict[str, Any] | None = Field(None, description="none only")
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = Field(None, max_length=128, description="Not supported (400)")
    function_call: str | dict[str, Any] | None = None
    modalities: list[Annotated[str, StringConstraints(max_length=16)]] | None = Field(None, max_length=4)
    metadata: dict[str, Annotated[str, StringConstraints(max_length=512)]] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: Annotated[str, StringConstraints(max_length=32)] | None = None
    reasoning_effort: Annotated[str, StringConstraints(max_length=16)] | None = None
    safety_identifier: Annotated[str, StringConstraints(max_length=256)] | None = None
    prompt_cache_key: Annotated[str, StringConstraints(max_length=256)] | None = None


class CompletionRequest(Sampling):
    """OpenAI's legacy ``completions.create``: the prompt is answered as one user turn (tunery's models are
    chat models; their template wraps every prompt)."""

    prompt: Text | list[Text] = Field(description="One prompt (a list of one is accepted)")
    suffix: Text | None = Field(None, description="Not supported (400)")
    echo: bool | None = Field(None, description="false only")
    best_of: int | None = Field(None, ge=1, le=20, description="1 only")


def _unsupported(body: Sampling) -> list[tuple[str, str]]:
    """The fields whose value would change the answer in a way tunery cannot honour."""
    problems = []
    if body.n not in (None, 1):
        problems.append(("n", f"{body.n}: tunery answers one choice per request; send n=1 or leave it out"))
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0):
            problems.append((name, "not supported: tunery applies no penalty; send 0 or leave it out"))
    if isinstance(body, CompletionRequest) and body.logprobs not in (None, False, 0):
        problems.append(("logprobs", "not supported on completions; chat completions return them"))
    if body.logit_bias:
        problems.append(("logit_bias", "not supported"))
    if isinstance(body, ChatCompletionRequest):
        if body.tools or body.functions:
            problems.append(("tools" if body.tools else "functions", "function calling is not supported"))
        if body.tool_choice not in (None, "none") or body.function_call not in (None, "none"):
            problems.append(("tool_choice", "function calling is not supported; leave it out or send 'none'"))
        if body.top_logprobs not in (None, 0) and not body.logprobs:
            problems.append(("top_logprobs", "needs logprobs: true"))
        if body.logprobs and body.stream:
            problems.append(("logprobs", "not returned on a stream; send stream: false"))
        if body.modalities and set(body.modalities) != {"text"}:
            problems.append(("modalities", 'only ["text"]: the models answer in text'))
    if isinstance(body, CompletionRequest):
        if body.suffix:
            problems.append(("suffix", "not supported: completions answer after the prompt only"))
        if body.echo:
            problems.append(("echo", "not supported"))
        if body.best_of not in (None, 1):
            problems.append(("best_of", "1 only"))
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            problems.append(("prompt", "one prompt per request"))
    return problems


def _config(body: Sampling) -> dict[str, Any]:
    config: dict[str, Any] = {}
    tokens = body.max_completion_tokens if isinstance(body, ChatCompletionRequest) else None
    tokens = tokens if tokens is not None else body.max_tokens
    for name, value in (("temperature", body.temperature), ("topP", body.top_p), ("maxOutputTokens", tokens)):
        if value is not None:
            config[name] = value
    if body.seed is not None:
        config["seed"] = body.seed
    if body.stop:
        config["stopSequences"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
    if isinstance(body, ChatCompletionRequest) and body.logprobs:
        config["responseLogprobs"] = True
        config["logprobs"] = body.top_logprobs or 0
    if body.response_format is not None:
        kind = body.response_format.type  # "text" is free text: a tuned model's kept label set or schema opts out
        config["responseMimeType"] = "text/plain" if kind == "text" else "application/json"
        schema = body.response_format.json_schema
        if kind == "json_schema" and schema is not None and schema.schema_ is not None:
            config["responseJsonSchema"] = schema.schema_
    return config


def chat_body(body: ChatCompletionRequest) -> tuple[dict[str, Any], dict[int, int]]:
    """The Gemini generateContent body of a chat request, and which message each of its turns came from."""
    problems = _unsupported(body)
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    origin: dict[int, int] = {}
    for i, message in enumerate(body.messages):
        field = f"messages[{i}]"
        if message.role in ("tool", "function") or message.tool_calls or message.function_call:
            problems.append((field, "function calling is not supported (tool messages and tool_calls)"))
            continue
        if message.role in ("system", "developer"):
            text = _text(message.content, field, problems)
            if text is not None:
                system.append(text)
            continue
        parts = translate.chat_parts(message.content, field, problems)  # text, image_url, input_audio, file
        if parts is None:
            continue
        origin[len(contents)] = i
        contents.append({"role": "model" if message.role == "assistant" else "user", "parts": parts})
    if problems:
        raise invalid(problems)
    raw: dict[str, Any] = {"contents": contents}
    if system:
        raw["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _config(body)
    if config:
        raw["generationConfig"] = config
    return raw, origin


def _text(content: str | list[ContentPart] | None, field: str, problems: list[tuple[str, str]]) -> str | None:
    if content is None:
        problems.append((f"{field}.content", "required: the message's text"))
        return None
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            problems.append((f"{field}.content[{j}]", f"{part.type}: a system message takes text parts only"))
        else:
            texts.append(part.text)
    return "".join(texts)


def completion_body(body: CompletionRequest) -> dict[str, Any]:
    problems = _unsupported(body)
    if problems:
        raise invalid(problems)
    prompt = body.prompt[0] if isinstance(body.prompt, list) else body.prompt
    raw: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    config = _config(body)
    if config:
        raw["generationConfig"] = config
    return raw


def _checked(raw: dict[str, Any], origin: dict[int, int] | None = None) -> None:
    """The Gemini parser's checks, with each problem named by the OpenAI field it came from."""
    try:
        gemini.parse_generate_request(raw)
    except DatasetError as exc:
        names = []
        for problem in exc.problems:
            name = problem.field
            match = re.match(r"contents\[(\d+)\]", name)
            if match and origin is not None and int(match.group(1)) in origin:
                name = translate.chat_field(name, origin)
            elif origin is None and name.startswith("contents"):
                name = "prompt"
            name = name.replace("generationConfig.maxOutputTokens", "max_tokens").replace("generationConfig.", "")
            names.append((name, problem.message))
        raise invalid(names) from None


def _usage(result: dict[str, Any]) -> dict[str, int]:
    meta = result.get("usageMetadata") or {}
    prompt, output = int(meta.get("promptTokenCount", 0)), int(meta.get("candidatesTokenCount", 0))
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def choice_logprobs(result: dict[str, Any]) -> dict[str, Any] | None:
    """A choice's ``logprobs`` (``content``: each token, its log probability and bytes, and the top tokens at its
    place) from the Gemini candidate's ``logprobsResult``; None when none was asked for."""
    found = ((result.get("candidates") or [{}])[0]).get("logprobsResult")
    if found is None:
        return None

    def token(entry: dict[str, Any]) -> dict[str, Any]:
        text = entry.get("token", "")
        return {"token": text, "logprob": entry.get("logProbability", 0.0), "bytes": list(text.encode())}

    tops = found.get("topCandidates") or []
    content = [
        {**token(chosen), "top_logprobs": [token(t) for t in (tops[i].get("candidates") if i < len(tops) else [])]}
        for i, chosen in enumerate(found.get("chosenCandidates") or [])
    ]
    return {"content": content, "refusal": None}


def _candidate(result: dict[str, Any]) -> tuple[str, str | None]:
    """The new text of a GenerateContentResponse (or chunk), and its finish reason if it is the last."""
    candidates = result.get("candidates") or [{}]
    parts = (candidates[0].get("content") or {}).get("parts") or [{}]
    reason = candidates[0].get("finishReason")
    return "".join(p.get("text", "") for p in parts), (FINISH_REASONS.get(reason, "stop") if reason else None)


@router.post(
    "/v1/chat/completions",
    response_model=None,
    summary="Chat completion (OpenAI)",
    responses=STREAM_RESPONSES,
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, tenant: Tenant) -> Any:
    """OpenAI's chat completion on a base model or a tuned model (its ``fine_tuned_model``)."""
    raw, origin = chat_body(body)
    _checked(raw, origin)
    ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = generation.stream(request, tenant, body.model, raw)
        try:
            first = await anext(chunks)
        except (ApiError, DatasetError) as exc:  # media named by the request, refused: by its OpenAI field
            raise translate.chat_error(exc, origin) from None
        return _sse(_chat_chunks(first, chunks, ident, created, body.model, usage))
    try:
        result = await generation.generate(request, tenant, body.model, raw)
    except (ApiError, DatasetError) as exc:
        raise translate.chat_error(exc, origin) from None
    text, reason = _candidate(result)
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": reason or "stop",
                "logprobs": choice_logprobs(result),
            }
        ],
        "usage": _usage(result),
        "system_fingerprint": None,
    }


@router.post("/v1/completions", response_model=None, summary="Text completion (OpenAI)", responses=STREAM_RESPONSES)
async def create_completion(body: CompletionRequest, request: Request, tenant: Tenant) -> Any:
    raw = completion_body(body)
    _checked(raw)
    ident, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = generation.stream(request, tenant, body.model, raw)
        first = await anext(chunks)
        return _sse(_completion_chunks(first, chunks, ident, created, body.model, usage))
    result = await generation.generate(request, tenant, body.model, raw)
    text, reason = _candidate(result)
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": [{"index": 0, "text": text, "finish_reason": reason or "stop", "logprobs": None}],
        "usage": _usage(result),
    }


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _all(first: dict[str, Any], chunks: Any) -> AsyncIterator[dict[str, Any]]:
    yield first
    try:
        async for chunk in chunks:
            yield chunk
    except TuneryError as exc:  # after the 200: the client reads an error event
        yield error_body(status_for(exc), str(exc))
    finally:
        await chunks.aclose()


async def _chat_chunks(
    first: dict[str, Any], chunks: Any, ident: str, created: int, model: str, usage: bool
) -> AsyncIterator[dict[str, Any]]:
    head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
    extra = {"usage": None} if usage else {}
    yield {
        **head,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        **extra,
    }
    last: dict[str, Any] = {}
    async for chunk in _all(first, chunks):
        if "error" in chunk:
            yield chunk
            return
        text, reason = _candidate(chunk)
        last = chunk
        if text:
            yield {**head, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}], **extra}
        if reason:
            yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}], **extra}
    if usage:
        yield {**head, "choices": [], "usage": _usage(last)}


async def _completion_chunks(
    first: dict[str, Any], chunks: Any, ident: str, created: int, model: str, usage: bool
) -> AsyncIterator[dict[str, Any]]:
    head = {"id": ident, "object": "text_completion", "created": created, "model": model}
    last: dict[str, Any] = {}
    async for chunk in _all(first, chunks):
        if "error" in chunk:
            yield chunk
            return
        text, reason = _candidate(chunk)
        last = chunk
        yield {**head, "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}]}
    if usage:
        yield {**head, "choices": [], "usage": _usage(last)}


# --- models and files: the shared paths' OpenAI fields ----------------------------------------------------


def unix(stamp: str | None) -> int | None:
    """An RFC 3339 time as Unix seconds, as OpenAI writes times."""
    if not stamp:
        return None
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def openai_model(resource: dict[str, Any], tenant: str) -> dict[str, Any]:
    """OpenAI's ``Model`` fields for a Gemini model resource (``models/{id}``)."""
    return {
        "id": resource["name"].removeprefix("models/"),
        "object": "model",
        "created": unix(resource.get("createTime")) or 0,
        "owned_by": tenant if resource.get("tuningJob") else "tunery",
    }


def openai_file(record: StoredFile) -> dict[str, Any]:
    """OpenAI's ``FileObject`` fields for an upload; its ``id`` is what ``training_file`` takes."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.size_bytes,
        "created_at": unix(record.create_time) or 0,
        "filename": record.display_name,
        "purpose": record.stats.get("purpose", "fine-tune"),
        "status": "processed",
        **({"status_details": record.stats["partialCheck"]["message"]} if "partialCheck" in record.stats else {}),
    }


@router.get(
    "/v1/files/{file_id}/content",
    response_model=None,
    summary="A file's content (OpenAI): an upload, or a batch's output or error file (JSONL)",
    responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}, **ERRORS},
)
async def read_file_content(file_id: FileId, tenant: Tenant, store: StoreDep) -> Response:
    """``output_file_id`` and ``error_file_id`` of a batch (its result lines so far), or an uploaded file's bytes."""
    found = batches.output_file(file_id)
    if found is not None:
        return await batches.results(store, tenant, *found)
    record = await run_in_threadpool(store.get_file, tenant, file_id)
    if not os.path.isfile(record.path):
        raise NotFoundError(f"files/{file_id}: its content is gone")
    mime = record.stats.get("mimeType", "application/jsonl")  # a media upload keeps its type
    return FileResponse(record.path, media_type=mime, filename=record.display_name)


# --- fine-tuning jobs -------------------------------------------------------------------------------------

Auto = Literal["auto"]


class FineTuneHyperparameters(OpenAIRequest):
    n_epochs: int | Auto | None = None
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None


class SupervisedMethod(OpenAIRequest):
    hyperparameters: FineTuneHyperparameters | None = None


class DpoHyperparameters(FineTuneHyperparameters):
    beta: float | Auto | None = Field(None, gt=0, le=100)


class DpoMethod(OpenAIRequest):
    hyperparameters: DpoHyperparameters | None = None


class FineTuneMethod(OpenAIRequest):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJobRequest(OpenAIRequest):
    """OpenAI's ``fine_tuning.jobs.create``: tune ``model`` on an uploaded ``training_file``."""

    model: ModelName
    training_file: ModelName
    validation_file: ModelName | None = None
    hyperparameters: FineTuneHyperparameters | None = None
    method: FineTuneMethod | None = None
    suffix: Annotated[str, StringConstraints(max_length=64)] | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    metadata: dict[str, Annotated[str, StringConstraints(max_length=512)]] | None = Field(None, max_length=16)
    integrations: list[dict[str, Any]] | None = Field(None, description="empty only")


JOB_NAMES = {
    **{
        f"{spec}.{native}": openai
        for spec in ("supervisedTuningSpec", "preferenceOptimizationSpec")
        for native, openai in (
            ("trainingDatasetUri", "training_file"),
            ("validationDatasetUri", "validation_file"),
            ("hyperParameters.epochCount", "hyperparameters.n_epochs"),
            ("hyperParameters.batchSize", "hyperparameters.batch_size"),
            ("hyperParameters.learningRateMultiplier", "hyperparameters.learning_rate_multiplier"),
            ("hyperParameters.beta", "method.dpo.hyperparameters.beta"),
            ("hyperParameters.seed", "seed"),
        )
    },
    "baseModel": "model",
    "tunedModelDisplayName": "suffix",
    "labels": "metadata",
}
TUNING_SPECS = {"supervised": "supervisedTuningSpec", "dpo": "preferenceOptimizationSpec"}
"""OpenAI's ``method.type`` → the native request's tuning spec."""


def fine_tuning_body(body: FineTuningJobRequest) -> dict[str, Any]:
    """The native ``POST /v1/tuningJobs`` body; 400 for a method or integration tunery does not run."""
    problems = []
    hyper: Any = body.hyperparameters
    kind = body.method.type if body.method is not None else "supervised"
    if kind not in TUNING_SPECS:
        problems.append(("method.type", f"{kind!r}: tunery runs supervised and dpo fine-tuning"))
    elif body.method is not None:
        given = getattr(body.method, kind)
        if given is not None and given.hyperparameters:
            if hyper is not None:
                problems.append(("hyperparameters", f"give hyperparameters or method.{kind}'s, not both"))
            hyper = given.hyperparameters
    if body.integrations:
        problems.append(("integrations", "not supported"))
    if problems:
        raise invalid(problems)
    values: dict[str, Any] = {}
    for name, rest in (
        ("n_epochs", "epochCount"),
        ("batch_size", "batchSize"),
        ("learning_rate_multiplier", "learningRateMultiplier"),
        ("beta", "beta"),
    ):
        value = getattr(hyper, name, None) if hyper else None
        if value is not None and value != "auto":
            values[rest] = value
    if body.seed is not None:
        values["seed"] = body.seed
    tuning: dict[str, Any] = {"trainingDatasetUri": body.training_file, "hyperParameters": values}
    if body.validation_file is not None:
        tuning["validationDatasetUri"] = body.validation_file
    native: dict[str, Any] = {"baseModel": body.model, TUNING_SPECS[kind]: tuning}
    if body.suffix:
        native["tunedModelDisplayName"] = body.suffix
    if body.metadata:
        native["labels"] = body.metadata
    return native


def openai_job(job: Job) -> dict[str, Any]:
    """A tuning job as OpenAI's ``fine_tuning.job``."""
    kind = "dpo" if "preferenceOptimizationSpec" in job.request else "supervised"
    spec, tuning = job.spec, job.request.get(TUNING_SPECS[kind], {})
    hyper = {
        "n_epochs": spec.get("epochs") or "auto",
        "batch_size": spec.get("batch_size"),
        "learning_rate_multiplier": spec.get("learning_rate_multiplier") or "auto",
        **({"beta": spec.get("beta")} if kind == "dpo" else {}),
    }
    error = None
    if job.error:
        error = {"code": str(job.error.get("code", "")), "message": job.error.get("message", ""), "param": None}
    stats = job.stats or {}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": unix(job.create_time),
        "finished_at": unix(job.end_time),
        "model": job.request.get("baseModel", job.base_model),
        "fine_tuned_model": job.tuned_model_id,
        "organization_id": job.tenant,
        "status": STATUSES.get(job.state, "queued"),
        "hyperparameters": hyper,
        "training_file": tuning.get("trainingDatasetUri"),
        "validation_file": tuning.get("validationDatasetUri"),
        "result_files": [],
        "trained_tokens": stats.get("totalBillableTokenCount") if job.state == SUCCEEDED else None,
        "error": error,
        "seed": spec.get("seed", 0),
        "estimated_finish": None,
        "integrations": [],
        "metadata": job.labels or None,
        "method": {"type": kind, kind: {"hyperparameters": hyper}},
        "user_provided_suffix": job.request.get("tunedModelDisplayName"),
    }


def _list(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": has_more}


@router.post("/v1/fine_tuning/jobs", response_model=None, summary="Create a fine-tuning job (OpenAI)", responses=ERRORS)
async def create_fine_tuning_job(
    body: FineTuningJobRequest,
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    settings: SettingsDep,
    scheduler: SchedulerDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=256)] = None,
) -> dict[str, Any]:
    """The same job as ``POST /v1/tuningJobs`` makes (``GET /v1/tuningJobs/{id}`` reads it too)."""
    native = fine_tuning_body(body)
    job, _ = await run_in_threadpool(
        translate.create_job, native, request, tenant, store, settings, scheduler, idempotency_key, JOB_NAMES
    )
    return openai_job(job)


@router.get("/v1/fine_tuning/jobs", response_model=None, summary="List fine-tuning jobs (OpenAI)", responses=ERRORS)
def read_fine_tuning_jobs(
    tenant: Tenant,
    store: StoreDep,
    after: Annotated[str | None, Query(max_length=128, description="A job id: the jobs older than it")] = None,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_PAGE_SIZE)] = 20,
    metadata: Annotated[str | None, Query(max_length=1024, description="Accepted; not applied")] = None,
) -> dict[str, Any]:
    token = str(store.get_job(tenant, after).seq) if after else None
    jobs, next_token = store.list_jobs(tenant, page_size=limit, page_token=token)
    return _list([openai_job(job) for job in jobs], next_token is not None)


@router.get("/v1/fine_tuning/jobs/{job_id}", response_model=None, summary="Read a fine-tuning job", responses=ERRORS)
def read_fine_tuning_job(job_id: JobId, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return openai_job(store.get_job(tenant, job_id))


@router.post(
    "/v1/fine_tuning/jobs/{job_id}/cancel", response_model=None, summary="Cancel a fine-tuning job", responses=ERRORS
)
def cancel_fine_tuning_job(job_id: JobId, tenant: Tenant, store: StoreDep, scheduler: SchedulerDep) -> dict[str, Any]:
    job = store.request_cancel(tenant, job_id)
    wake_scheduler(scheduler)
    return openai_job(job)


def openai_event(event: dict[str, Any]) -> dict[str, Any]:
    """A job event as OpenAI's ``fine_tuning.job.event``; a metrics event keeps tunery's names and adds OpenAI's."""
    data = dict(event.get("data") or {})
    kind = "metrics" if event.get("type") == "metrics" else "message"
    message = event.get("message")
    if kind == "metrics":
        data.setdefault("train_mean_token_accuracy", data.get("train_token_accuracy"))
        if "eval_loss" in data:
            data.setdefault("valid_loss", data["eval_loss"])
        loss = data.get("train_loss")
        message = message or f"Step {data.get('step')}/{data.get('total_steps')}: training loss={loss}"
    failed = event.get("type") == "state" and (event.get("data") or {}).get("state") == FAILED
    return {
        "id": f"ftevent-{event['id']}",
        "object": "fine_tuning.job.event",
        "created_at": unix(event.get("createTime")),
        "level": "error" if failed else "info",
        "message": message or event.get("type", ""),
        "type": kind,
        "data": data,
    }


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/events",
    response_model=None,
    summary="List a job's events (OpenAI)",
    responses=ERRORS,
)
def read_fine_tuning_events(
    job_id: JobId,
    tenant: Tenant,
    store: StoreDep,
    after: Annotated[str | None, Query(pattern=r"^ftevent-[0-9]{1,18}$", description="Events older than this")] = None,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_EVENTS_PAGE)] = 20,
) -> dict[str, Any]:
    """Newest first, as OpenAI lists them."""
    events = store.events(tenant, job_id, 0, limits.MAX_EVENTS_PAGE)
    newest = list(reversed(events))
    if after:
        cursor = int(after.removeprefix("ftevent-"))
        newest = [e for e in newest if e["id"] < cursor]
    return _list([openai_event(e) for e in newest[:limit]], len(newest) > limit)


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/checkpoints",
    response_model=None,
    summary="List a job's checkpoints (OpenAI)",
    responses=ERRORS,
)
def read_fine_tuning_checkpoints(
    job_id: JobId,
    tenant: Tenant,
    store: StoreDep,
    after: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_PAGE_SIZE)] = 10,
) -> dict[str, Any]:
    """The checkpoints of a succeeded job, newest first: one per kept epoch, each a model of its own named
    ``{fine_tuned_model}:ckpt-step-N`` (the tuned model is the best of them on the validation set); a model tuned
    before checkpoints were kept lists itself with the last step's metrics."""
    job = store.get_job(tenant, job_id)
    if job.tuned_model_id is None:
        return _list([], False)
    created = unix(job.end_time) or unix(job.update_time)
    kept = kept_checkpoints(store.get_tuned_model(tenant, job.tuned_model_id).path)
    if not kept:
        if after:
            return _list([], False)
        metrics = [e["data"] for e in store.events(tenant, job_id, 0, limits.MAX_EVENTS_PAGE) if e["type"] == "metrics"]
        last = metrics[-1] if metrics else {}
        return _list([_checkpoint(job, created, job.tuned_model_id, f"ftckpt-{job.id}", last)], False)
    listed = [
        _checkpoint(job, created, f"{job.tuned_model_id}:{c['name']}", f"ftckpt-{job.id}-{c['step']}", c)
        for c in reversed(kept)
    ]
    ids = [c["id"] for c in listed]
    start = ids.index(after) + 1 if after in ids else 0 if after is None else len(ids)
    page = listed[start : start + limit]
    return _list(page, start + limit < len(listed))


def _checkpoint(job: Job, created: int | None, model: str, checkpoint_id: str, found: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``fine_tuning.job.checkpoint``; ``found``: a kept checkpoint (its ``metrics``) or a metrics record."""
    metrics = found.get("metrics", found)
    step = int(found.get("step", 0))
    return {
        "id": checkpoint_id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": created,
        "fine_tuned_model_checkpoint": model,
        "fine_tuning_job_id": job.id,
        "step_number": step,
        "metrics": {
            "step": step,
            "train_loss": metrics.get("train_loss"),
            "train_mean_token_accuracy": metrics.get("train_token_accuracy"),
            "valid_loss": metrics.get("eval_loss"),
            "valid_mean_token_accuracy": metrics.get("eval_token_accuracy"),
            "valid_exact_match": metrics.get("eval_exact_match"),
        },
    }
