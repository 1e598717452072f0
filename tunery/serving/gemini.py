"""Gemini's generateContent and countTokens shapes: request → (``Example``, ``GenerationConfig``), result → JSON.

Nothing here imports torch: the API process checks a request with these functions, and the model host
(``tunery.serving.host``) runs it. A bad request raises one ``DatasetError`` whose ``problems`` name
every field at fault (``contents[1].role``, ``generationConfig.maxOutputTokens``), never just the first.

Requests are read as the official clients and Google's REST examples send them: camelCase or snake_case
names (``canonical_request``), ``systemInstruction`` with any role. Fields that change nothing here are
accepted (``safetySettings``, ``labels``, zero penalties, ``responseModalities: ["TEXT"]``); fields that would
change the answer and that tunery cannot honour (``tools``, ``toolConfig``, ``cachedContent``, a non-zero
penalty, ``candidateCount`` > 1) are problems that say so, never ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunery.data.formats import Example, parse_example
from tunery.data.validation import Problem
from tunery.errors import DatasetError, ModelError

MAX_OUTPUT_TOKENS = 8192
DEFAULT_OUTPUT_TOKENS = 256  # maxOutputTokens when a request gives none
# What one request body may hold, in every wire format (the API's schemas and tunery.serving.openai take these)
MAX_BODY_CHARS = 1024 * 1024  # one text field can fill a JSON body, no more
MAX_URI_LENGTH = 2048
MAX_TURNS = 1000
MAX_PARTS = 100
MAX_STOP_SEQUENCES = 5
MAX_TOP_LOGPROBS = 20  # the most alternatives per token that responseLogprobs / top_logprobs return
GENERATE_FIELDS = ("contents", "systemInstruction", "generationConfig", "safetySettings", "labels")
COUNT_TOKENS_FIELDS = ("contents", "systemInstruction", "generateContentRequest", "model")
# Fields that would change the answer, which tunery cannot honour: refused by name, never ignored.
UNSUPPORTED_FIELDS = {
    "tools": "function calling and other tools are not supported by tunery's models; remove tools",
    "toolConfig": "function calling is not supported by tunery's models; remove toolConfig",
    "cachedContent": "cached contents are not supported; send the whole conversation in contents",
}


@dataclass(frozen=True)
class Limit:
    """The Gemini name of a ``GenerationConfig`` number and the values it may take: the one statement of each
    generation range (the API's request schemas take their bounds from here, ``bounds``)."""

    name: str
    kind: type
    least: float
    most: float
    expected: str
    above_least: bool = False  # the least value itself is out of range

    def ok(self, value: float) -> bool:
        return (value > self.least if self.above_least else value >= self.least) and value <= self.most

    def bounds(self) -> dict[str, float]:
        """pydantic's ``Field`` bounds for this range."""
        return {"gt" if self.above_least else "ge": self.least, "le": self.most}


LIMITS = {
    "max_output_tokens": Limit("maxOutputTokens", int, 1, MAX_OUTPUT_TOKENS, f"1 to {MAX_OUTPUT_TOKENS}"),
    "temperature": Limit("temperature", float, 0, 2, "0 to 2"),
    "top_p": Limit("topP", float, 0, 1, "more than 0, at most 1", above_least=True),
    "top_k": Limit("topK", int, 0, 2**31 - 1, "0 (no top-k) to 2**31 - 1"),
    "seed": Limit("seed", int, 0, 2**63 - 1, "0 to 2**63 - 1"),
    "candidate_count": Limit("candidateCount", int, 1, 1, "1 (one candidate per request)"),
    "logprobs": Limit("logprobs", int, 0, MAX_TOP_LOGPROBS, f"0 to {MAX_TOP_LOGPROBS}"),
}
PENALTY_BOUNDS = {"ge": -2, "le": 2}  # what the wire formats accept for a penalty; tunery applies none (0 only)


@dataclass(frozen=True)
class GenerationConfig:
    """Gemini's ``generationConfig``; temperature 0 is greedy (the default)."""

    max_output_tokens: int = DEFAULT_OUTPUT_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None
    # controlled output (tunery.serving.constrain): text/plain, application/json or text/x.enum; None (not given):
    # the model's own, a tuned model's kept label set or schema (``kept_constraint``), else text/plain
    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None  # Gemini's OpenAPI subset
    response_json_schema: dict[str, Any] | None = None  # plain JSON Schema
    response_logprobs: bool = False  # each answer token's log probability (and ``logprobs`` alternatives) returned
    logprobs: int | None = None
    json_separators: tuple[str, str] | None = None  # a kept schema's spacing (not a request field): compact if None

    def __post_init__(self) -> None:
        for attr in ("max_output_tokens", "temperature", "top_p", "top_k", "seed", "logprobs"):
            value, limit = getattr(self, attr), LIMITS[attr]
            if value is not None and not limit.ok(value):
                raise ModelError(f"{limit.name} {value}: expected {limit.expected}")


@dataclass(frozen=True)
class TokenLogprob:
    """One answer token and its log probability, with the most likely tokens at its place (``top``), from the
    distribution the token was chosen from: the model's at temperature 1, restricted to what the request's
    constraint allows (so a label set's first-token alternatives are its labels)."""

    token: str
    token_id: int
    logprob: float
    top: tuple[tuple[str, int, float], ...] = ()

    def to_gemini(self) -> dict[str, Any]:
        return {"token": self.token, "tokenId": self.token_id, "logProbability": self.logprob}


@dataclass(frozen=True)
class Generation:
    """One generated answer and what it cost; ``logprobs`` when the request asked for them."""

    text: str
    finish_reason: str  # STOP or MAX_TOKENS
    prompt_tokens: int
    output_tokens: int
    latency_ms: float
    logprobs: tuple[TokenLogprob, ...] | None = None
    end_logprob: float = 0.0  # the stop token's, which is not part of the text (0: the answer could only end)

    @property
    def logprob(self) -> float | None:
        """The answer's log probability, its end included (a label that begins a longer one may go on), when
        logprobs were asked for."""
        return None if self.logprobs is None else sum(t.logprob for t in self.logprobs) + self.end_logprob


class RequestProblem(Problem):
    """A problem in a request body, shown as ``field: message`` (a request has no file or line)."""

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def request_error(what: str, problems: list[tuple[str, str]]) -> DatasetError:
    """One ``DatasetError`` listing every (field, message) problem of a request."""
    n = len(problems)
    found: list[Problem] = [RequestProblem("request", 0, field, message) for field, message in problems]
    return DatasetError(f"invalid {what}: {n} problem{'s' * (n != 1)}", found)


# --- generationConfig ------------------------------------------------------------------------------------

_CONFIG_NAMES = {
    "maxOutputTokens": "max_output_tokens",
    "max_output_tokens": "max_output_tokens",
    "temperature": "temperature",
    "topP": "top_p",
    "top_p": "top_p",
    "topK": "top_k",
    "top_k": "top_k",
    "stopSequences": "stop_sequences",
    "stop_sequences": "stop_sequences",
    "seed": "seed",
    "candidateCount": "candidate_count",
    "candidate_count": "candidate_count",
    "responseMimeType": "response_mime_type",
    "response_mime_type": "response_mime_type",
    "responseSchema": "response_schema",
    "response_schema": "response_schema",
    "responseJsonSchema": "response_json_schema",
    "response_json_schema": "response_json_schema",
    "responseLogprobs": "response_logprobs",
    "response_logprobs": "response_logprobs",
    "logprobs": "logprobs",
}
_CONTROLLED = ("response_mime_type", "response_schema", "response_json_schema")  # checked by constrain.py
_GEMINI_CONFIG_NAMES = [name for name in _CONFIG_NAMES if "_" not in name]
# generationConfig fields accepted at the one value that leaves the answer as tunery makes it; any other
# value would change the answer, so it is refused by name.
_NEUTRAL_CONFIG: dict[str, tuple[Callable[[Any], bool], str]] = {
    "presencePenalty": (lambda v: v == 0, "0 (tunery applies no presence penalty)"),
    "frequencyPenalty": (lambda v: v == 0, "0 (tunery applies no frequency penalty)"),
    "responseModalities": (lambda v: v in ([], ["TEXT"], ["text"]), '["TEXT"] (the models answer in text only)'),
    "enableEnhancedCivicAnswers": (lambda v: v is False, "false"),
}
_NEUTRAL_SNAKE = {
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "response_modalities": "responseModalities",
}


def generation_config(
    value: GenerationConfig | dict[str, Any] | None, field: str = "generationConfig"
) -> GenerationConfig:
    """A ``GenerationConfig`` from Gemini's JSON (camelCase or snake_case names); every problem raised at once."""
    if value is None or isinstance(value, GenerationConfig):
        return value or GenerationConfig()
    config, problems = _parse_config(value, field)
    if config is None:
        raise request_error(field, problems)
    return config


def _parse_config(value: Any, field: str) -> tuple[GenerationConfig | None, list[tuple[str, str]]]:
    if not isinstance(value, dict):
        return None, [(field, f"expected an object, got {_json_type(value)}")]
    problems: list[tuple[str, str]] = []
    kwargs: dict[str, Any] = {}
    for key, raw in value.items():
        attr, path = _CONFIG_NAMES.get(key), f"{field}.{key}"
        neutral = _NEUTRAL_CONFIG.get(_NEUTRAL_SNAKE.get(key, key))
        if neutral is not None:
            if raw is not None and not neutral[0](raw):
                problems.append((path, f"{raw!r} is not supported; expected {neutral[1]} or no value"))
        elif attr is None:
            problems.append((path, f"unknown field; expected one of {', '.join(_GEMINI_CONFIG_NAMES)}"))
        elif attr in _CONTROLLED:
            kwargs[attr] = raw
        elif raw is not None:  # JSON null leaves the default
            checked = _checked_value(attr, raw, path, problems)
            if isinstance(checked, str):
                problems.append((path, checked))
            elif checked is not None:
                kwargs[attr] = checked
    problems += _controlled_problems(kwargs, field)
    if kwargs.get("logprobs") is not None and not kwargs.get("response_logprobs"):
        problems.append((f"{field}.logprobs", "needs responseLogprobs: true"))
    if problems:
        return None, problems
    kwargs.pop("candidate_count", None)  # checked to be 1; one candidate is all the engine makes
    return GenerationConfig(**kwargs), []


def _controlled_problems(kwargs: dict[str, Any], field: str) -> list[tuple[str, str]]:
    from tunery.serving.constrain import config_problems

    if kwargs.get("response_mime_type") is None:
        kwargs.pop("response_mime_type", None)
    names = ("response_mime_type", "response_schema", "response_json_schema")
    return config_problems(*(kwargs.get(name) for name in names), field=field)


def _number(attr: str, raw: Any) -> int | float | str:
    """The checked value, or a message saying what is wrong with it."""
    limit = LIMITS[attr]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return f"expected {'an integer' if limit.kind is int else 'a number'}, got {_json_type(raw)}"
    if limit.kind is int:
        if isinstance(raw, float) and not raw.is_integer():
            return f"expected an integer, got {raw!r}"
        raw = int(raw)
    else:
        raw = float(raw)
    if not limit.ok(raw):
        return f"expected {limit.expected}, got {raw!r}"
    return raw


def _checked_value(attr: str, raw: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if attr == "stop_sequences":
        return _stop_sequences(raw, path, problems)
    if attr == "response_logprobs":
        return raw if isinstance(raw, bool) else f"expected true or false, got {_json_type(raw)}"
    return _number(attr, raw)


def _stop_sequences(raw: Any, path: str, problems: list[tuple[str, str]]) -> tuple[str, ...] | None:
    if not isinstance(raw, list | tuple) or len(raw) > MAX_STOP_SEQUENCES:
        problems.append((path, f"expected a list of at most {MAX_STOP_SEQUENCES} strings"))
        return None
    bad = [i for i, s in enumerate(raw) if not isinstance(s, str) or not s]
    for i in bad:
        problems.append((f"{path}[{i}]", "expected a non-empty string"))
    return None if bad else tuple(raw)


# --- requests --------------------------------------------------------------------------------------------


def parse_generate_request(body: Any) -> tuple[Example, GenerationConfig]:
    """A generateContent body → the prompt and its generation config; ``DatasetError`` lists every problem."""
    example, config, problems = _parse_generate(body, "")
    if example is None or config is None:
        raise request_error("generateContent request", problems)
    return example, config


def parse_count_tokens_request(body: Any) -> Example:
    """A countTokens body (``contents`` or a whole ``generateContentRequest``) → the prompt to count.

    The count is the prompt's tokens as generateContent would send them, so the same rules apply: turns
    alternate and the last one is the user's.
    """
    if not isinstance(body, dict):
        raise request_error("countTokens request", [("request", f"expected a JSON object, got {_json_type(body)}")])
    body, problems = canonical_request(body, "")
    problems += _unknown(body, COUNT_TOKENS_FIELDS, "")
    if "generateContentRequest" in body:
        if "contents" in body or "systemInstruction" in body:
            problems.append(("generateContentRequest", "give either contents or generateContentRequest, not both"))
        inner = body["generateContentRequest"]
        if isinstance(inner, dict):  # the real API names the model inside; it is the URL's model here
            inner = {k: v for k, v in inner.items() if k != "model"}
        example, _, found = _parse_generate(inner, "generateContentRequest.")
    else:
        example, found = _parse_contents(body, "")
    problems += found
    if example is None or problems:
        raise request_error("countTokens request", problems)
    return example


def _parse_generate(body: Any, prefix: str) -> tuple[Example | None, GenerationConfig | None, list[tuple[str, str]]]:
    if not isinstance(body, dict):
        return None, None, [(prefix.rstrip(".") or "request", f"expected a JSON object, got {_json_type(body)}")]
    body, problems = canonical_request(body, prefix)
    problems += _unknown(body, GENERATE_FIELDS, prefix)
    example, found = _parse_contents(body, prefix)
    problems += found
    raw = body.get("generationConfig")
    config, found = _parse_config({} if raw is None else raw, f"{prefix}generationConfig")
    problems += found
    return (None, None, problems) if problems else (example, config, [])


def _unknown(body: dict, known: tuple[str, ...], prefix: str) -> list[tuple[str, str]]:
    return [
        (f"{prefix}{k}", UNSUPPORTED_FIELDS.get(k) or f"unknown field; expected {', '.join(known)}")
        for k, v in body.items()
        if k not in known and not (k in UNSUPPORTED_FIELDS and v in (None, [], {}, ""))  # empty changes nothing
    ]


def canonical_request(body: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``body`` with the snake_case names official clients and Google's REST examples send (``system_instruction``,
    ``generation_config``, ``inline_data``...) in camelCase; a field given both ways is a problem."""
    problems: list[tuple[str, str]] = []
    out = _camel_keys(body, prefix, problems)
    if isinstance(out.get("contents"), list):
        out["contents"] = [_camel_turn(t, f"{prefix}contents[{i}]", problems) for i, t in enumerate(out["contents"])]
    if isinstance(out.get("systemInstruction"), dict):
        out["systemInstruction"] = _camel_turn(out["systemInstruction"], f"{prefix}systemInstruction", problems)
    if isinstance(out.get("generationConfig"), dict):
        out["generationConfig"] = _camel_keys(out["generationConfig"], f"{prefix}generationConfig.", problems)
    return out, problems


def _camel_keys(obj: dict[str, Any], prefix: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _camel(key) if isinstance(key, str) else key
        if name in out:
            problems.append((f"{prefix}{name}", f"given twice (as {name} and {key})"))
        out[name] = value
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _camel_turn(turn: Any, field: str, problems: list[tuple[str, str]]) -> Any:
    if not isinstance(turn, dict) or not isinstance(turn.get("parts"), list):
        return turn
    parts = []
    for j, part in enumerate(turn["parts"]):
        if isinstance(part, dict):
            part = _camel_keys(part, f"{field}.parts[{j}].", problems)
            for kind in ("inlineData", "fileData"):
                if isinstance(part.get(kind), dict):
                    part[kind] = _camel_keys(part[kind], f"{field}.parts[{j}].{kind}.", problems)
        parts.append(part)
    return {**turn, "parts": parts}


def _parse_contents(body: dict, prefix: str) -> tuple[Example | None, list[tuple[str, str]]]:
    """``contents`` and ``systemInstruction`` through the dataset parser; the last turn must be the user's."""
    if "contents" not in body:
        return None, [(f"{prefix}contents", "required: a list of turns, the last one the user's")]
    contents = body["contents"]
    if isinstance(contents, list):  # Gemini lets a turn leave out its role: it is the user's
        contents = [{"role": "user", **t} if isinstance(t, dict) and "role" not in t else t for t in contents]
    obj: dict[str, Any] = {"contents": contents}
    system = body.get("systemInstruction")
    problems: list[tuple[str, str]] = []
    if isinstance(system, str):
        if system.strip():
            obj["systemInstruction"] = {"parts": [{"text": system}]}
        else:
            problems.append((f"{prefix}systemInstruction", "empty text"))
    elif system is not None:
        obj["systemInstruction"] = system
    example, found = parse_example(obj, require_model_turn=False)
    problems += [(f"{prefix}{field}", message) for field, message in found]
    if example is not None and example.turns and example.turns[-1].role != "user":
        last = len(example.turns) - 1
        problems.append((f"{prefix}contents[{last}].role", "the last turn must be the user's; the model answers it"))
    return (example if not problems else None), problems


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --- responses -------------------------------------------------------------------------------------------


def generate_response(gen: Generation, model_version: str) -> dict[str, Any]:
    """Gemini's ``GenerateContentResponse`` for one generation, plus ``latencyMs`` (tunery's extension)."""
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": gen.text}]},
        "finishReason": gen.finish_reason,
        "index": 0,
    }
    if gen.logprobs is not None:
        candidate.update(logprobs_result(gen.logprobs))
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": gen.prompt_tokens,
            "candidatesTokenCount": gen.output_tokens,
            "totalTokenCount": gen.prompt_tokens + gen.output_tokens,
        },
        "modelVersion": model_version,
        "latencyMs": round(gen.latency_ms, 1),
    }


def logprobs_result(tokens: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """A candidate's ``logprobsResult`` (each token chosen, and the top ones at its place) and ``avgLogprobs``."""
    total = sum(t.logprob for t in tokens)
    return {
        "logprobsResult": {
            "chosenCandidates": [t.to_gemini() for t in tokens],
            "topCandidates": [
                {"candidates": [{"token": s, "tokenId": i, "logProbability": lp} for s, i, lp in t.top]} for t in tokens
            ],
            "logProbabilitySum": total,
        },
        "avgLogprobs": total / len(tokens) if tokens else 0.0,
    }


def count_tokens_response(n: int) -> dict[str, int]:
    """Gemini's ``CountTokensResponse``."""
    return {"totalTokens": n}
