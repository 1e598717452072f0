"""OpenAI's wire format: the chat, completion and fine-tuning request bodies, their checks, and their translation
to and from tunery's one request type (a Gemini generateContent body, parsed by ``tunery.serving.gemini``).

    raw, origin = chat_body(ChatCompletionRequest.model_validate(body))   # the generateContent body, turn → message
    check(raw, origin)                                                     # gemini's checks, named as OpenAI names them
    raw = completion_body(CompletionRequest.model_validate(body))
    native = fine_tuning_body(FineTuningJobRequest.model_validate(body))   # a native POST /v1/tuningJobs body
    answer = response_body(result, model, chat=True)                       # a chat.completion body

A chat request becomes a Gemini body: system messages → ``systemInstruction``, ``assistant`` → ``model``,
``response_format`` json_schema → ``responseMimeType``/``responseJsonSchema``, content parts → Gemini parts
(``chat_parts``). A request field that would change the answer and that tunery cannot honour (``n`` > 1, tools,
penalties, log probabilities on a stream) is a problem naming it, never ignored. Every problem is raised at once as
one ``DatasetError`` whose ``problems`` name the OpenAI fields (the API answers it as a 400 naming each).

Nothing here imports torch: the API process, the batch prediction worker and the model host may all use it.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tunery.data.media import normalize_mime, sniff
from tunery.data.validation import Problem
from tunery.errors import DatasetError, problems_message
from tunery.serving import gemini
from tunery.serving.gemini import LIMITS

Text = Annotated[str, StringConstraints(max_length=gemini.MAX_BODY_CHARS)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=gemini.MAX_URI_LENGTH)]
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}


def problems_error(problems: Iterable[tuple[str, str]]) -> DatasetError:
    """One error naming every ``(field, message)`` at fault in a request."""
    found = list(problems)
    return DatasetError(problems_message(found), [Problem("request", 0, field, message) for field, message in found])


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
    content: Text | list[ContentPart] | None = Field(None, max_length=gemini.MAX_PARTS)
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
    temperature: float | None = Field(
        None, **LIMITS["temperature"].bounds(), description="Default 0 (greedy), tunery's default."
    )
    top_p: float | None = Field(None, **LIMITS["top_p"].bounds())
    max_tokens: int | None = Field(None, **LIMITS["max_output_tokens"].bounds())
    stop: Stop | list[Stop] | None = None
    n: int | None = Field(None, ge=1, le=128, description="1 only")
    seed: int | None = Field(None, **LIMITS["seed"].bounds())
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, **gemini.PENALTY_BOUNDS, description="0 only")
    frequency_penalty: float | None = Field(None, **gemini.PENALTY_BOUNDS, description="0 only")
    logprobs: bool | int | None = Field(None, description="Chat: each answer token's log probability. Completions: no")
    logit_bias: dict[str, float] | None = Field(None, description="empty only")
    response_format: ResponseFormat | None = Field(
        None, description='{"type": "text"}: free text, also for a tuned model that keeps a label set or schema'
    )
    user: Annotated[str, StringConstraints(max_length=256)] | None = Field(None, description="Accepted; no effect")


class ChatCompletionRequest(Sampling):
    """OpenAI's ``chat.completions.create``."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=gemini.MAX_TURNS)
    max_completion_tokens: int | None = Field(None, **LIMITS["max_output_tokens"].bounds())
    top_logprobs: int | None = Field(
        None, **LIMITS["logprobs"].bounds(), description="With logprobs: the top tokens per place"
    )
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
        parts = chat_parts(message.content, field, problems)  # text, image_url, input_audio, file
        if parts is None:
            continue
        origin[len(contents)] = i
        contents.append({"role": "model" if message.role == "assistant" else "user", "parts": parts})
    if problems:
        raise problems_error(problems)
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
        raise problems_error(problems)
    prompt = body.prompt[0] if isinstance(body.prompt, list) else body.prompt
    raw: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    config = _config(body)
    if config:
        raw["generationConfig"] = config
    return raw


def check(raw: dict[str, Any], origin: dict[int, int] | None = None) -> None:
    """The Gemini parser's checks, with each problem named by the OpenAI field it came from."""
    try:
        gemini.parse_generate_request(raw)
    except DatasetError as exc:
        names = []
        for problem in exc.problems:
            name = problem.field
            match = re.match(r"contents\[(\d+)\]", name)
            if match and origin is not None and int(match.group(1)) in origin:
                name = chat_field(name, origin)
            elif origin is None and name.startswith("contents"):
                name = "prompt"
            name = name.replace("generationConfig.maxOutputTokens", "max_tokens").replace("generationConfig.", "")
            names.append((name, problem.message))
        raise problems_error(names) from None


def usage(result: dict[str, Any]) -> dict[str, int]:
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


def candidate(result: dict[str, Any]) -> tuple[str, str | None]:
    """The new text of a GenerateContentResponse (or chunk), and its finish reason if it is the last."""
    candidates = result.get("candidates") or [{}]
    parts = (candidates[0].get("content") or {}).get("parts") or [{}]
    reason = candidates[0].get("finishReason")
    return "".join(p.get("text", "") for p in parts), (FINISH_REASONS.get(reason, "stop") if reason else None)


def response_body(
    result: dict[str, Any], model: str, chat: bool, ident: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """A GenerateContentResponse as OpenAI's ``chat.completion`` (or ``text_completion``) body."""
    text, reason = candidate(result)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                  "finish_reason": reason or "stop", "logprobs": choice_logprobs(result)}  # fmt: skip
        kind, prefix = "chat.completion", "chatcmpl"
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason or "stop", "logprobs": None}
        kind, prefix = "text_completion", "cmpl"
    return {"id": ident or f"{prefix}-{secrets.token_hex(12)}", "object": kind,
            "created": created if created is not None else int(time.time()), "model": model,
            "choices": [choice], "usage": usage(result)}  # fmt: skip


# --- chat content parts → Gemini parts ----------------------------------------------------------------

DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(;[\w.+-]+=[^;,]*)*);base64,(?P<data>.*)$", re.DOTALL
)
AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg"}
STORED_TYPE = "application/octet-stream"
"""The ``mimeType`` of a ``fileData`` part whose type is the uploaded file's own (``file_id`` parts name none)."""
FILE_IDS = re.compile(r"^(files/)?[A-Za-z0-9_-]{1,128}$")


def chat_parts(content: Any, field: str, problems: list[tuple[str, str]]) -> list[dict[str, Any]] | None:
    """The Gemini parts of an OpenAI message's ``content`` (a string, or a list of content parts as dicts or
    pydantic models); None, with each problem appended as ``(messages[i].content[j], message)``, when any is bad."""
    if content is None:
        problems.append((f"{field}.content", "required: the message's text"))
        return None
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    before = len(problems)
    raws = [item.model_dump(exclude_none=True) if hasattr(item, "model_dump") else item for item in content]
    join = all(isinstance(raw, dict) and raw.get("type") == "text" for raw in raws)
    for j, raw in enumerate(raws):
        where = f"{field}.content[{j}]"
        part = _chat_part(raw, where, problems)
        if part is None:
            continue
        if join and parts:
            parts[-1] = {"text": parts[-1]["text"] + part["text"]}
        else:
            parts.append(part)
    if len(problems) > before:
        return None
    if not parts:
        problems.append((f"{field}.content", "empty: at least one part"))
        return None
    return parts


def _chat_part(raw: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        problems.append((where, "expected a content part object with a 'type'"))
        return None
    kind = raw.get("type")
    value = raw.get(kind) if isinstance(kind, str) else None
    if kind == "text":
        if not isinstance(raw.get("text"), str):
            problems.append((where, "text: expected a string"))
            return None
        return {"text": raw["text"]}
    if kind == "image_url":
        return _image_part(value, where, problems)
    if kind == "input_audio":
        return _audio_part(value, where, problems)
    if kind == "file":
        return _file_part(value, where, problems)
    shown = repr(kind)[:40]
    problems.append((where, f"{shown}: unsupported content part; expected text, image_url, input_audio or file"))
    return None


def _image_part(value: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    url = value.get("url") if isinstance(value, dict) else value if isinstance(value, str) else None
    if not isinstance(url, str) or not url:
        problems.append((where, "image_url: expected {'url': 'data:image/png;base64,...'}"))
        return None
    detail = value.get("detail") if isinstance(value, dict) else None
    if detail not in (None, "auto"):
        problems.append((where, f"image_url.detail {str(detail)[:20]!r}: only 'auto' (images are used as sent)"))
        return None
    return _data_url(url, "image", f"{where}: image_url.url", problems)


def _audio_part(value: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("data"), str) or not value["data"]:
        problems.append((where, "input_audio: expected {'data': base64 audio, 'format': 'wav' or 'mp3'}"))
        return None
    fmt = value.get("format")
    if fmt not in AUDIO_FORMATS:
        problems.append((where, f"input_audio.format {str(fmt)[:20]!r}: expected 'wav' or 'mp3'"))
        return None
    return _inline(AUDIO_FORMATS[fmt], value["data"], f"{where}: input_audio.data", problems)


def _file_part(value: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not (value.get("file_id") or value.get("file_data")):
        problems.append((where, "file: expected {'file_id': an uploaded file's id} or {'file_data': a data: URL}"))
        return None
    if value.get("file_id"):
        file_id = value["file_id"]
        if not isinstance(file_id, str) or not FILE_IDS.match(file_id):
            problems.append((where, f"file.file_id {str(file_id)[:40]!r}: not a file id (POST /v1/files returns one)"))
            return None
        return {"fileData": {"mimeType": STORED_TYPE, "fileUri": "files/" + file_id.removeprefix("files/")}}
    data = value["file_data"]
    if not isinstance(data, str):
        problems.append((where, "file.file_data: expected a data: URL (data:application/pdf;base64,...)"))
        return None
    return _data_url(data, None, f"{where}: file.file_data", problems)


def _data_url(url: str, modality: str | None, label: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    """``data:<mime>;base64,<data>`` as an ``inlineData`` part; a remote URL is refused (nothing is fetched)."""
    where, _, name = label.partition(": ")
    match = DATA_URL.match(url)
    if match is None:
        scheme = url.split(":", 1)[0].lower() if ":" in url[:16] else ""
        if scheme in ("http", "https"):
            reason = "remote URLs are not fetched; send a data: URL (base64) or upload the file (POST /v1/files)"
            problems.append((where, f"{name}: {reason} and send {{'type': 'file', 'file': {{'file_id': ...}}}}"))
        else:
            problems.append((where, f"{name}: expected a data: URL such as data:image/png;base64,..."))
        return None
    mime = normalize_mime(match["mime"])
    if modality is not None and not mime.startswith(modality + "/"):
        problems.append((where, f"{name}: {mime} is not an {modality} type"))
        return None
    return _inline(mime, match["data"], label, problems)


def _inline(mime: str, data: str, label: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    """An ``inlineData`` part, its base64 checked and its bytes' real type matched against ``mime``."""
    where, _, name = label.partition(": ")
    try:
        payload = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        problems.append((where, f"{name}: not valid base64"))
        return None
    real = sniff(payload[:64])
    if real is not None and real != mime:
        problems.append((where, f"{name}: declared {mime} but the bytes are {real}"))
        return None
    if real is None:
        problems.append((where, f"{name}: the bytes are not a known media type (declared {mime})"))
        return None
    return {"inlineData": {"mimeType": mime, "data": data}}


CONTENTS_FIELD = re.compile(r"^contents\[(\d+)\](\.parts\[(\d+)\])?")


def chat_field(name: str, origin: dict[int, int]) -> str:
    """A Gemini field of a translated chat request (``contents[k].parts[p]...``) as the OpenAI body names it
    (``messages[i].content[p]...``); other names as they are."""
    match = CONTENTS_FIELD.match(name)
    if match is None or int(match[1]) not in origin:
        return name
    head = f"messages[{origin[int(match[1])]}]" + (f".content[{match[3]}]" if match[2] else "")
    return head + name[match.end() :]


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
        raise problems_error(problems)
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
