"""The model host: the one long-lived process that imports torch and keeps models loaded for the API.

    python -m tunery.serving.host

It reads one JSON request per line on stdin and writes one JSON reply per line on stdout, in order,
and exits when stdin closes. Everything else the process prints (warnings, progress, library chatter)
goes to stderr, so it can never corrupt a reply. ``tunery.serving.process.ModelHost`` is its client.

    {"id": 1, "op": "generate", "model": "smollm2-135m-instruct", "request": {"contents": [...]}}
    {"id": 1, "ok": true, "result": {"candidates": [...], "usageMetadata": {...}}}
    {"id": 2, "ok": false, "error": {"code": 400, "type": "DatasetError", "message": "..."}}

Ops (one ``Host`` method each): ``generate``, ``generateBatch`` (several generate requests, each
answered by itself), ``countTokens``, ``validate``, ``evict``, ``ping``. A
``TuneryError`` answers code 400 with its message (a ``DatasetError`` also sends ``summary`` and
``problems``), a model that does not exist 404, anything else 500 with its traceback on stderr.
At most ``$TUNERY_SERVING_MAX_MODELS`` (default 2) engines stay loaded, least recently used dropped first.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TextIO, TypeVar

from tunery.data.formats import Example
from tunery.errors import ConfigError, DatasetError, NotFoundError, TuneryError
from tunery.models.catalog import CATALOG, DEFAULT_MODEL
from tunery.serving.gemini import (
    GenerationConfig,
    count_tokens_response,
    generate_response,
    parse_count_tokens_request,
    parse_generate_request,
    request_error,
)

if TYPE_CHECKING:
    from tunery.serving.engine import Engine

MAX_MODELS_ENV = "TUNERY_SERVING_MAX_MODELS"
MAX_TOKENIZERS = 8
BATCH_TOKENS = 16384  # prompts plus answers, padded, in one batch: about 0.8 GB of cache on the 135M model

T = TypeVar("T")


class ProtocolError(Exception):
    """A request the client should never send (no such op, a required field missing): a bug, so 500."""


class _LRU(Generic[T]):
    """At most ``size`` values by key; the least recently used is dropped before a new one loads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, T] = OrderedDict()

    def get(self, key: str, load: Callable[[], T]) -> T:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        while len(self.items) >= self.size:
            self.items.popitem(last=False)
            gc.collect()  # free the dropped model's memory before the next one loads
        value = self.items[key] = load()
        return value

    def peek(self, key: str) -> T | None:
        return self.items.get(key)

    def drop(self, key: str) -> bool:
        return self.items.pop(key, None) is not None


class Host:
    """The loaded engines and tokenizers, and one method per op; each takes the request and returns its result."""

    def __init__(self, max_models: int = 2) -> None:
        self.engines: _LRU[Engine] = _LRU(max_models)
        self.tokenizers: _LRU[Any] = _LRU(MAX_TOKENIZERS)
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "generate": self.generate,
            "generateBatch": self.generate_batch,
            "countTokens": self.count_tokens,
            "validate": self.validate,
            "evict": self.evict,
            "ping": self.ping,
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = self.ops.get(request.get("op"))  # type: ignore[arg-type]
        if op is None:
            raise ProtocolError(f"unknown op {request.get('op')!r}; expected one of {', '.join(self.ops)}")
        return op(request)

    def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{model, request, maxPromptTokens?, modelVersion?}`` → Gemini's ``GenerateContentResponse``."""
        engine, ids, config = self._prepare(request)
        generation = engine.generate_batch([ids], [config])[0]
        return generate_response(generation, request.get("modelVersion") or _version(engine.name))

    def generate_batch(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{items: [generate request, ...]}`` → ``{replies: [{ok, result} | {ok: false, error}, ...]}``, in order.

        Each item is checked alone (a bad one fails by itself); ``batchable`` items for the same model are
        generated together, at most ``BATCH_TOKENS`` padded tokens at a time; others one by one.
        """
        from tunery.serving.engine import batchable

        items = _required(request, "items")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ProtocolError("generateBatch: 'items' must be a list of generate requests")
        replies: list[dict[str, Any]] = [{}] * len(items)
        groups: dict[Any, list[_Prompt]] = {}
        for i, item in enumerate(items):
            prepared = outcome(partial(self._prepare, item))
            if not prepared["ok"]:
                replies[i] = prepared
                continue
            prompt = _Prompt(i, *prepared["result"])
            groups.setdefault(prompt.engine.name if batchable(prompt.config) else i, []).append(prompt)
        for group in groups.values():
            for chunk in _chunks(group):
                engine = chunk[0].engine
                done = outcome(partial(engine.generate_batch, [p.ids for p in chunk], [p.config for p in chunk]))
                for n, prompt in enumerate(chunk):
                    version = items[prompt.position].get("modelVersion") or _version(engine.name)
                    replies[prompt.position] = (
                        {"ok": True, "result": generate_response(done["result"][n], version)} if done["ok"] else done
                    )
        return {"replies": replies}

    def _prepare(self, request: dict[str, Any]) -> tuple[Engine, list[int], GenerationConfig]:
        """A generate request checked and tokenized: its engine, prompt ids and generation settings."""
        model = _model(request)
        example, config = parse_generate_request(request.get("request"))
        _check_text_only(example, model, "generateContent request")
        engine = self._engine(model)
        ids = engine.prompt(example, config, request.get("maxPromptTokens"))
        return engine, ids, config

    def count_tokens(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{model, request}`` → ``{totalTokens}``: the prompt's tokens, as ``Engine.count_tokens`` counts them."""
        from tunery.data.tokenize import prompt_ids

        model = _model(request)
        example = parse_count_tokens_request(request.get("request"))
        _check_text_only(example, model, "countTokens request")
        return count_tokens_response(len(prompt_ids(self._tokenizer(model), example)))

    def validate(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{path, model?, maxLength, batchSize}`` → ``{exampleCount, problems, supervisedTuningDataStats}``.

        Checks and counts as ``tunery datasets validate``/``stats`` do, with the automatic epoch count.
        Problems are returned, not raised; the statistics are null when there is any error (tuning
        refuses such a file).
        """
        from tunery.data.stats import default_epochs, tuning_data_stats
        from tunery.data.validation import read_examples
        from tunery.models.sources import resolve_base

        path = _required(request, "path")
        model = request.get("model") or DEFAULT_MODEL
        base = resolve_base(model)
        report = read_examples(
            path,
            tokenizer=self._tokenizer(model),
            max_length=min(int(_required(request, "maxLength")), base.context_length),
            model_id=model,
            modalities=base.modalities,
        )
        stats = None
        if report.ok:
            epochs = default_epochs(len(report.encoded))
            stats = tuning_data_stats(report.encoded, epochs, int(_required(request, "batchSize")))
        return {
            "exampleCount": len(report.examples),
            "problems": [p.to_dict() for p in report.problems],
            "supervisedTuningDataStats": stats,
        }

    def evict(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{model}`` → ``{evicted}``: forget a model (its directory was deleted or replaced)."""
        model = _required(request, "model")
        evicted = self.engines.drop(model)
        self.tokenizers.drop(model)
        gc.collect()
        return {"evicted": evicted}

    def ping(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{}`` → ``{pid, models}``: the host is up, and which models it holds."""
        return {"pid": os.getpid(), "models": list(self.engines.items)}

    def _engine(self, model: str) -> Engine:
        from tunery.serving.engine import Engine

        return self.engines.get(model, lambda: Engine(model))

    def _tokenizer(self, model: str) -> Any:
        """The model's tokenizer: its loaded engine's, else loaded alone (no weights) and cached."""
        engine = self.engines.peek(model)
        if engine is not None:
            return engine.tokenizer
        return self.tokenizers.get(model, lambda: _load_tokenizer(model))


def _load_tokenizer(model: str) -> Any:
    from tunery.models.loading import load_tokenizer
    from tunery.models.sources import resolve_base
    from tunery.models.tuned import is_tuned_dir

    return load_tokenizer(model if is_tuned_dir(model) else resolve_base(model).path)


def _required(request: dict[str, Any], name: str) -> Any:
    value = request.get(name)
    if value in (None, ""):
        raise ProtocolError(f"{request.get('op')}: {name!r} is required")
    return value


def _model(request: dict[str, Any]) -> str:
    """The request's model, which must be a catalog id or a model directory (else 404)."""
    model = str(_required(request, "model"))
    path = Path(model).expanduser()
    if model not in CATALOG and not any((path / name).is_file() for name in ("config.json", "tunery.json")):
        raise NotFoundError(f"model {model!r} not found: not a catalog id ({', '.join(CATALOG)}) nor a model directory")
    return model


def _version(model: str) -> str:
    """What ``modelVersion`` says when the client gives none: the catalog id, or the directory's name."""
    return model if model in CATALOG else Path(model).name


def _check_text_only(example: Example, model: str, what: str) -> None:
    """The engine generates from text; media parts are refused by field, all at once."""
    problems = [
        (f"contents[{i}].parts[{j}].{part.kind}", f"{_version(model)} takes text only, not {part.modality}")
        for i, turn in enumerate(example.turns)
        for j, part in enumerate(turn.parts)
        if part.kind != "text"
    ]
    if problems:
        raise request_error(what, problems)


class _Prompt(NamedTuple):
    """One checked item of a ``generateBatch``: where it is in the request, and what generates it."""

    position: int
    engine: Engine
    ids: list[int]
    config: GenerationConfig


def _chunks(group: list[_Prompt]) -> list[list[_Prompt]]:
    """Runs of ``group``, in order, whose padded batch stays within ``BATCH_TOKENS`` (one prompt at least)."""
    chunks: list[list[_Prompt]] = [[]]
    for prompt in group:
        trial = [*chunks[-1], prompt]
        if len(trial) > 1 and len(trial) * max(len(p.ids) + p.config.max_output_tokens for p in trial) > BATCH_TOKENS:
            chunks.append([prompt])
        else:
            chunks[-1] = trial
    return [chunk for chunk in chunks if chunk]


def outcome(work: Callable[[], Any]) -> dict[str, Any]:
    """``{"ok": true, "result": work()}``, or ``{"ok": false, "error": ...}`` for what it raised; never raises
    but for a ``ProtocolError`` (a bug in the client) or a ``KeyboardInterrupt``."""
    try:
        return {"ok": True, "result": work()}
    except ProtocolError:
        raise
    except NotFoundError as exc:
        return {"ok": False, "error": _user_error(404, exc)}
    except TuneryError as exc:
        return {"ok": False, "error": _user_error(400, exc)}
    except Exception as exc:
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        return {"ok": False, "error": {"code": 500, "type": type(exc).__name__, "message": message}}


def reply(host: Host, line: str) -> dict[str, Any]:
    """The reply to one request line; never raises."""
    request_id = None
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ProtocolError("a request must be a JSON object")
        request_id = request.get("id")
        return {"id": request_id, **outcome(lambda: host.handle(request))}
    except Exception as exc:
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        return {"id": request_id, "ok": False, "error": {"code": 500, "type": type(exc).__name__, "message": message}}


def _user_error(code: int, exc: TuneryError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, DatasetError) and exc.problems:
        error["summary"] = exc.args[0]
        error["problems"] = [p.to_dict() for p in exc.problems]
    return error


def _claim_stdout() -> TextIO:
    """The replies' stream (the original stdout); from now on fd 1 and ``sys.stdout`` write to stderr."""
    sys.stdout.flush()
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


def _max_models() -> int:
    value = os.environ.get(MAX_MODELS_ENV, "2")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{MAX_MODELS_ENV}={value!r}: expected a whole number of at least 1")
    return int(value)


def main() -> None:
    """Serve requests from stdin until it closes."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecations are not the operator's
    replies = _claim_stdout()
    host = Host(max_models=_max_models())
    try:
        for line in iter(sys.stdin.readline, ""):
            if line.strip():
                replies.write(json.dumps(reply(host, line)) + "\n")
                replies.flush()
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C in the API's terminal, or the API is gone
        pass


if __name__ == "__main__":
    main()
