"""The model host: the one long-lived process that imports torch and keeps models loaded for the API.

    python -m tunery.serving.host

It reads one JSON request per line on stdin and writes one JSON line per reply on stdout. Requests are
multiplexed: many are in flight at once and replies come by ``id``, in any order. Everything else the
process prints (warnings, progress, library chatter) goes to stderr, so it can never corrupt a reply.
``tunery.serving.process.ModelHost`` is its client.

    {"id": 1, "op": "generate", "model": "smollm2-135m-instruct", "request": {"contents": [...]}}
    {"id": 2, "op": "generate", "model": "...", "request": {...}, "stream": true}
    {"id": 2, "chunk": {"candidates": [{"content": {"parts": [{"text": "Hel"}]}, ...}]}}     (zero or more)
    {"id": 1, "ok": true, "result": {"candidates": [...], "usageMetadata": {...}}}
    {"id": 3, "op": "cancel", "target": 2}
    {"id": 2, "ok": false, "error": {"code": 499, "type": "Cancelled", "message": "..."}}
    {"id": 4, "ok": false, "error": {"code": 400, "type": "DatasetError", "message": "..."}}

Ops: ``generate`` (``stream: true`` for chunks of the text new since the last one; the final reply is the
last chunk, with ``finishReason`` and ``usageMetadata``), ``generateBatch`` (several generate requests,
each answered by itself, in one reply), ``cancel`` (a generate request, waiting or decoding: its row
leaves the batch), ``countTokens``, ``validate``, ``evict``, ``ping``, ``warm`` (load models before they are
asked for).

Threads: the reader (this one) answers ``ping`` and ``cancel`` itself; generate requests are checked and
tokenized, and their model or adapter loaded, by a loader thread; ``countTokens``, ``validate`` and
``evict`` run on a small pool; the decode loop (``Scheduler``) runs every generation with continuous
batching (``tunery.serving.engine.Batch``), one batch per loaded base, at most
``$TUNERY_SERVING_MAX_BATCH`` rows each; a joining row's prompt is prefilled ``$TUNERY_SERVING_PREFILL_CHUNK``
(128) tokens between two steps, so a long prompt does not stall the rows decoding. So a count or a check never
waits behind a generation.

A ``TuneryError`` answers code 400 with its message (a ``DatasetError`` also sends ``summary`` and
``problems``), a model that does not exist 404, anything else 500 with its traceback on stderr.
At most ``$TUNERY_SERVING_MAX_MODELS`` (default 2) bases stay loaded and at most
``$TUNERY_SERVING_MAX_ADAPTERS`` (default 8) adapters on each, least recently used dropped first;
``$TUNERY_SERVING_WEIGHTS`` (default ``auto``) says how their weights are held (``tunery.serving.quantized``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import traceback
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tunery import lifeline, settings
from tunery.data.formats import Example
from tunery.errors import DatasetError, NotFoundError, TuneryError, http_status
from tunery.models.catalog import CATALOG, DEFAULT_MODEL
from tunery.serving.gemini import (
    Generation,
    count_tokens_response,
    generate_response,
    parse_count_tokens_request,
    parse_generate_request,
    request_error,
)

if TYPE_CHECKING:
    from tunery.serving.engine import Batch, Models, Row

MAX_TOKENIZERS = 8
FILE_ID = re.compile(r"[0-9]{14}[0-9a-f]{12}")  # tunery.jobs.store.new_id's form
CANCELLED = 499


class ProtocolError(Exception):
    """A request the client should never send (no such op, a required field missing): a bug, so 500."""


class Cancelled(Exception):
    """The client cancelled the request (it went away, or its deadline passed)."""


# --- the decode loop -----------------------------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    """A generate request in the decode loop: its row, and what to call with its answer or its error."""

    id: Any
    row: Row
    done: Callable[[Generation | BaseException], None]
    cancelled: bool = False
    reason: BaseException | None = None  # what a cancelled request ends with (default: cancelled by the client)


@dataclass
class Scheduler:
    """The decode loop: rows wait in ``pending`` (oldest first) until their base's batch has room (and their
    adapter a slot), join it with a prefill, and leave it as they finish. Every loop turn prefills the next
    ``prefill_chunk`` tokens of each base's oldest joining prompt and steps its batch once, so a request that
    arrives mid-batch decodes once its prompt is in, and the rows decoding keep their pace meanwhile."""

    models: Models
    max_batch: int = 8
    prefill_chunk: int | None = settings.SERVING_PREFILL_CHUNK  # tokens between two steps (None: all)
    pending: deque[Job] = field(default_factory=deque)
    batches: dict[str, Batch] = field(default_factory=dict)
    running: dict[Any, Job] = field(default_factory=dict)  # by request id: pending and decoding
    evictions: list[tuple[str, Callable[[bool], None]]] = field(default_factory=list)
    wake: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.models.busy = lambda base: any(b.base is base and len(b) for b in self.batches.values())
        self.thread = threading.Thread(target=self.loop, name="tunery-decode", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.wake:
            self.pending.append(job)
            self.running[job.id] = job
            self.wake.notify()

    def cancel(self, request_id: Any) -> bool:
        """Mark a request cancelled; the loop takes it out of the queue or the batch before its next step."""
        with self.wake:
            job = self.running.get(request_id)
            if job is None or job.cancelled:
                return False
            job.cancelled = True
            self.wake.notify()
            return True

    def evict(self, name: str, done: Callable[[bool], None]) -> None:
        """Forget a model (it was deleted): its rows, waiting or decoding, end before the next step with a 404
        saying so, then it is dropped; ``done(was_loaded)``."""
        with self.wake:
            for job in self.running.values():
                if job.row.served.name == name and not job.cancelled:
                    job.cancelled = True
                    job.reason = NotFoundError("the model was deleted while this request ran; it ends here")
            self.evictions.append((name, done))
            self.wake.notify()

    def loop(self) -> None:
        while True:
            with self.wake:
                while not (self.pending or self.evictions or any(len(b) for b in self.batches.values())):
                    self.wake.wait()
            self._drop_cancelled()
            self._admit()
            for batch in list(self.batches.values()):
                if batch.filling:
                    self._fill(batch)
                if batch.rows:
                    self._step(batch)
            self._evict()

    def _drop_cancelled(self) -> None:
        with self.wake:
            gone = [job for job in self.pending if job.cancelled]
            for job in gone:
                self.pending.remove(job)
        for batch in self.batches.values():
            rows = [row for row in [*batch.rows, *(r for r, _ in batch.filling)] if self._job(row).cancelled]
            if rows:
                batch.remove(rows)
                gone += [self._job(row) for row in rows]
        for job in gone:
            self._finish(job, job.reason or Cancelled("cancelled by the client"))

    def _job(self, row: Row) -> Job:
        return row.job  # type: ignore[attr-defined]

    def _admit(self) -> None:
        """Move waiting rows into their batches, oldest first, while there is room; each is prefilled alone, a
        chunk of its prompt between two steps (``_fill``)."""
        from tunery.serving.engine import Batch

        with self.wake:
            waiting = list(self.pending)
        for job in waiting:
            base = job.row.served.base
            batch = self.batches.get(base.path)
            if batch is None or batch.base is not base:
                batch = self.batches[base.path] = Batch(base)
            if len(batch) >= self.max_batch:
                continue
            try:
                slot = job.row.served.slot()
                if slot is None:
                    continue  # every adapter slot is in use by running rows: wait for one to finish
                job.row.slot = slot
                with self.wake:
                    self.pending.remove(job)
                batch.begin(job.row)
            except Exception as exc:
                with self.wake:
                    if job in self.pending:
                        self.pending.remove(job)
                self._finish(job, exc)

    def _fill(self, batch: Batch) -> None:
        """The next chunk of the oldest prompt waiting to join ``batch``; its job ends if the first token ends it."""
        row = batch.filling[0][0]
        try:
            joined = batch.fill(self.prefill_chunk)
        except Exception as exc:  # a bug or out of memory: this row fails, the loop goes on
            traceback.print_exc()
            batch.remove([row])
            self._finish(self._job(row), exc)
            return
        if joined is not None and joined.done:
            self._finish(self._job(joined), joined.generation())

    def _step(self, batch: Batch) -> None:
        try:
            finished = batch.step()
        except Exception as exc:  # a bug or out of memory: every row of this batch fails, the loop goes on
            traceback.print_exc()
            rows = list(batch.rows)
            batch.remove(rows)
            for row in rows:
                self._finish(self._job(row), exc)
            return
        for row in finished:
            self._finish(self._job(row), row.generation())

    def _finish(self, job: Job, outcome: Generation | BaseException) -> None:
        with self.wake:
            self.running.pop(job.id, None)
        job.done(outcome)

    def _evict(self) -> None:
        if not self.evictions:
            return
        with self.wake:
            evictions, self.evictions = self.evictions, []
        later = []
        for name, done in evictions:
            in_use = any(job.row.served.name == name for job in self.running.values())
            if in_use:
                later.append((name, done))
            else:
                done(self.models.evict(name))
        with self.wake:
            self.evictions += later


# --- the ops -------------------------------------------------------------------------------------------------


class Host:
    """The loaded models, the decode loop, and one method per op; replies go to ``send`` (any thread)."""

    def __init__(
        self,
        send: Callable[[dict[str, Any]], None],
        max_models: int = 2,
        max_adapters: int = 8,
        max_batch: int = 8,
        weights: str = "auto",
        prefill_chunk: int | None = settings.SERVING_PREFILL_CHUNK,
    ) -> None:
        self.send = send
        self.limits = {"max_bases": max_models, "max_adapters": max_adapters, "weights": weights}
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self._models: Models | None = None  # made on first use, so torch loads off the reader thread
        self._scheduler: Scheduler | None = None
        self._vlms: dict[str, Any] = {}  # vision-language models (tunery.serving.multimodal), by name
        self._start_lock = threading.Lock()
        self.tokenizers: OrderedDict[str, Any] = OrderedDict()
        self.tokenizers_lock = threading.Lock()
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="tunery-load")  # one model loads at a time
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="tunery-ops")
        self.outstanding = 0
        self.idle = threading.Condition()
        self.cancel_lock = threading.Lock()
        self.cancelled: set[Any] = set()  # requests cancelled before they reached the decode loop
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "countTokens": self.count_tokens,
            "validate": self.validate,
            "ping": self.ping,
        }
        self.imported = threading.Event()
        threading.Thread(target=_import_transformers, args=(self.imported,), name="tunery-import", daemon=True).start()

    def _after_imports(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run ``work`` once transformers' classes are imported (``_import_transformers``), at most
        ``IMPORT_WAIT_SECONDS`` from now."""
        self.imported.wait(IMPORT_WAIT_SECONDS)
        return work(*args)

    @property
    def models(self) -> Models:
        self._start()
        assert self._models is not None
        return self._models

    @property
    def scheduler(self) -> Scheduler:
        self._start()
        assert self._scheduler is not None
        return self._scheduler

    def _start(self) -> None:
        with self._start_lock:
            if self._models is None:
                from tunery.serving.engine import Models

                self._models = Models(**self.limits)  # type: ignore[arg-type]
                self._scheduler = Scheduler(self._models, self.max_batch, prefill_chunk=self.prefill_chunk)

    def handle_line(self, line: str) -> None:
        """Take one request line: answer it now (ping, cancel, a bad line) or start it on its thread."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ProtocolError("a request must be a JSON object")
        except Exception as exc:
            self.send({"id": None, **_failure(exc)})
            return
        request_id, op = request.get("id"), request.get("op")
        self._begin()
        try:
            if op == "generate":
                self.loader.submit(self._after_imports, self._generate, request)
            elif op == "generateBatch":
                self.loader.submit(self._after_imports, self._generate_batch, request)
            elif op == "cancel":
                self._reply(request_id, outcome(lambda: self.cancel(request)))
            elif op == "evict":
                self.pool.submit(self._evict, request)
            elif op == "warm":  # on the loader: a generate request that comes meanwhile waits for this load
                warm = lambda: self._reply(request_id, outcome(lambda: self.warm(request)))  # noqa: E731
                self.loader.submit(self._after_imports, warm)
            elif op == "ping":
                self._reply(request_id, outcome(lambda: self.ping(request)))
            elif op in self.ops:
                run = lambda: self._reply(request_id, outcome(lambda: self.ops[op](request)))  # noqa: E731
                self.pool.submit(self._after_imports, run)
            else:
                known = ", ".join(("generate", "generateBatch", "cancel", *self.ops, "evict", "warm"))
                raise ProtocolError(f"unknown op {op!r}; expected one of {known}")
        except Exception as exc:
            self._reply(request_id, _failure(exc))

    def _begin(self) -> None:
        with self.idle:
            self.outstanding += 1

    def _reply(self, request_id: Any, reply: dict[str, Any]) -> None:
        self.send({"id": request_id, **reply})
        with self.idle:
            self.outstanding -= 1
            self.idle.notify_all()

    def drain(self) -> None:
        """Wait for every request taken so far to be answered."""
        with self.idle:
            while self.outstanding > 0:
                self.idle.wait()

    # generate

    def _generate(self, request: dict[str, Any]) -> None:
        request_id, stream = request.get("id"), bool(request.get("stream"))
        if _is_vlm(request):  # a vision-language model: processor + generate on this thread, one row at a time
            request["_left"] = lambda text: text  # a stream gets the whole answer as its one, last chunk
            self._answer(request, _outcome_of(lambda: self._vlm_generate(request)))
            return
        try:
            job = self._job(request, lambda outcome: self._answer(request, outcome), stream)
        except Exception as exc:
            self._reply(request_id, _failure(exc))
            return
        with self.cancel_lock:
            refused = request_id in self.cancelled
            self.cancelled.discard(request_id)
            if not refused:
                self.scheduler.submit(job)
        if refused:
            self._reply(request_id, _failure(Cancelled("cancelled by the client")))

    def _answer(self, request: dict[str, Any], outcome: Generation | BaseException) -> None:
        request_id = request.get("id")
        if isinstance(outcome, BaseException):
            self._reply(request_id, _failure(outcome))
            return
        version = request.get("modelVersion") or _version(str(request.get("model")))
        result = generate_response(outcome, version)
        if request.get("stream"):  # the last chunk: the text not yet sent, the finish reason and usage
            result["candidates"][0]["content"]["parts"][0]["text"] = request["_left"](outcome.text)
        self._reply(request_id, {"ok": True, "result": result})

    def _job(self, request: dict[str, Any], done: Callable[[Generation | BaseException], None], stream: bool) -> Job:
        """A generate request checked, tokenized and made a row (its model loaded if need be)."""
        model = _model(request)
        example, config = parse_generate_request(request.get("request"))
        _check_text_only(example, model, "generateContent request")
        served = self.models.get(model)
        ids = served.prompt(example, config, request.get("maxPromptTokens"))
        on_text = None
        if stream:
            version = request.get("modelVersion") or _version(model)
            sent: list[str] = []
            request["_left"] = lambda text: text[len("".join(sent)) :] if text.startswith("".join(sent)) else ""

            def on_text(new: str) -> None:
                sent.append(new)
                self.send({"id": request.get("id"), "chunk": _chunk(new, version)})

        row = served.row(ids, config, on_text)
        job = Job(request.get("id"), row, done)
        row.job = job  # type: ignore[attr-defined]
        return job

    def _vlm(self, model: str) -> Any:
        from tunery.serving.multimodal import VisionLanguageModel

        with self._start_lock:
            if model not in self._vlms:
                self._vlms[model] = VisionLanguageModel(model)
            return self._vlms[model]

    def _vlm_generate(self, request: dict[str, Any]) -> Generation:
        from tunery.serving.engine import on_own_thread

        model = _model(request)
        example, config = parse_generate_request(request.get("request"))
        # on a thread that ends with it, so that its OpenMP pool does not live on beside the decode loop's
        return on_own_thread(lambda: self._vlm(model).generate(example, config))

    def _generate_batch(self, request: dict[str, Any]) -> None:
        """``{items: [generate request, ...]}`` → ``{replies: [{ok, result} | {ok: false, error}, ...]}``, in order;
        each item is checked alone (a bad one fails by itself) and all decode in the running batches."""
        request_id = request.get("id")
        items = request.get("items")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            self._reply(
                request_id, _failure(ProtocolError("generateBatch: 'items' must be a list of generate requests"))
            )
            return
        replies: list[dict[str, Any] | None] = [None] * len(items)
        left = [len(items)]
        lock = threading.Lock()

        def settle(i: int, reply: dict[str, Any]) -> None:
            with lock:
                replies[i] = reply
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._reply(request_id, {"ok": True, "result": {"replies": replies}})

        if not items:
            self._reply(request_id, {"ok": True, "result": {"replies": []}})
            return
        for i, item in enumerate(items):
            version = item.get("modelVersion") or _version(str(item.get("model")))

            def done(outcome: Generation | BaseException, i: int = i, version: str = version) -> None:
                if isinstance(outcome, BaseException):
                    settle(i, _failure(outcome))
                else:
                    settle(i, {"ok": True, "result": generate_response(outcome, version)})

            if _is_vlm(item):  # a vision-language model: on this thread, one row at a time (as generate does)
                try:
                    answered: Generation | BaseException = self._vlm_generate(item)
                except Exception as exc:
                    answered = exc
                done(answered)
                continue
            try:
                job = self._job({**item, "id": (request_id, i)}, done, stream=False)
            except Exception as exc:
                settle(i, _failure(exc))
                continue
            self.scheduler.submit(job)

    def cancel(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{target}`` → ``{cancelled}``: the generate request ``target`` leaves the queue or its batch."""
        target = request.get("target")
        with self.cancel_lock:
            if self._scheduler is not None and self._scheduler.cancel(target):
                return {"cancelled": True}
            if len(self.cancelled) > 10_000:  # cancels of requests long answered: forget them
                self.cancelled.clear()
            self.cancelled.add(target)  # not in the decode loop yet: refused when it gets there
        return {"cancelled": False}

    # the other ops

    def warm(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{models, tokenizers}`` → ``{}``: the engine imported, each model loaded for generation and each
        tokenizer for checks, before any request needs them (the API's warm start)."""
        self._start()
        for model in request.get("models") or []:
            self.models.get(model)
        for model in request.get("tokenizers") or []:
            self._tokenizer(model)
        return {}

    def count_tokens(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{model, request}`` → ``{totalTokens}``: the prompt's tokens, as a generate request counts them."""
        from tunery.data.tokenize import prompt_ids

        model = _model(request)
        example = parse_count_tokens_request(request.get("request"))
        if _is_vlm(request):
            return count_tokens_response(self._vlm(model).count_tokens(example))
        _check_text_only(example, model, "countTokens request")
        return count_tokens_response(len(prompt_ids(self._tokenizer(model), example)))

    def validate(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{path, model?, maxLength, batchSize, mediaDir?, until?}`` → ``{exampleCount, problems, complete,
        checkedLines, checkedBytes, ...DataStats}``.

        Checks and counts as ``tunery datasets validate``/``stats`` do, with the automatic epoch count, in flat
        memory (the examples are tallied, not kept). Problems are returned, not raised; the statistics are null
        when there is any error (tuning refuses such a file) or when the check stopped at ``until``
        (``complete`` false: the first ``checkedLines`` lines, ``checkedBytes`` bytes, were checked, the rest
        not). Media parts resolve as a server's do (``upload_media_source``): ``files/{id}`` in ``mediaDir`` (the
        uploader's media uploads), paths under ``TUNERY_DATA_ROOT``, never next to the upload itself.
        """
        from tunery.data.stats import default_epochs
        from tunery.data.validation import read_examples
        from tunery.models.sources import resolve_base

        path = _required(request, "path")
        model = request.get("model") or DEFAULT_MODEL
        base = resolve_base(model)
        until = request.get("until")  # a time.time(), from the server (same clock), so its start is counted too
        report = read_examples(
            path,
            tokenizer=self._tokenizer(model),
            max_length=min(int(_required(request, "maxLength")), base.context_length),
            model_id=model,
            modalities=base.modalities,
            media_source=upload_media_source(request.get("mediaDir")),
            objective=None,  # supervised examples or preference pairs, as the first line is
            keep=False,
            deadline=time.monotonic() + float(until) - time.time() if until else None,
        )
        stats = None
        if report.ok and report.stopped_at is None and report.tally is not None:
            stats = report.tally.stats(default_epochs(report.count), int(_required(request, "batchSize")))
        return {
            "exampleCount": report.count,
            "problems": [p.to_dict() for p in report.problems],
            "complete": report.stopped_at is None,
            "checkedLines": report.lines,
            "checkedBytes": report.stopped_at[1] if report.stopped_at else Path(path).stat().st_size,
            ("preferenceOptimizationDataStats" if report.objective == "DPO" else "supervisedTuningDataStats"): stats,
        }

    def _evict(self, request: dict[str, Any]) -> None:
        """``{model}`` → ``{evicted}``: forget a model (its directory was deleted or replaced) and its tokenizer;
        its running rows end first, with a 404 (``Scheduler.evict``)."""
        request_id = request.get("id")
        try:
            model = _required(request, "model")
        except Exception as exc:
            self._reply(request_id, _failure(exc))
            return
        with self.tokenizers_lock:
            self.tokenizers.pop(model, None)
        if self._models is None:
            self._reply(request_id, {"ok": True, "result": {"evicted": False}})
            return
        self.scheduler.evict(
            model, lambda evicted: self._reply(request_id, {"ok": True, "result": {"evicted": evicted}})
        )

    def ping(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{}`` → ``{pid, models, running, waiting}``: the host is up, the models it holds, its rows."""
        scheduler, models = self._scheduler, self._models
        return {
            "pid": os.getpid(),
            "models": models.loaded() if models is not None else [],
            "running": sum(len(b) for b in list(scheduler.batches.values())) if scheduler is not None else 0,
            "waiting": len(scheduler.pending) if scheduler is not None else 0,
        }

    def _tokenizer(self, model: str) -> Any:
        """The model's tokenizer: its loaded model's, else loaded alone (no weights) and cached."""
        served = self._models.served.get(model) if self._models is not None else None
        if served is not None:
            return served.tokenizer
        with self.tokenizers_lock:
            if model in self.tokenizers:
                self.tokenizers.move_to_end(model)
                return self.tokenizers[model]
        tokenizer = _load_tokenizer(model)
        with self.tokenizers_lock:
            self.tokenizers[model] = tokenizer
            while len(self.tokenizers) > MAX_TOKENIZERS:
                self.tokenizers.popitem(last=False)
        return tokenizer


def upload_media_source(media_dir: str | None) -> Any:
    """Where an uploaded dataset's media parts resolve: ``files/{id}`` in ``media_dir`` (one tenant's media
    uploads; an id is a name in it, never a path), other paths under ``TUNERY_DATA_ROOT``; nothing is fetched."""
    from tunery.data.media import MediaError, MediaSource

    def resolve(file_id: str) -> Path:
        if media_dir is None or not FILE_ID.fullmatch(file_id):
            raise MediaError(f"uploaded file not found (upload it with POST /v1/files): files/{file_id[:40]}")
        return Path(media_dir) / file_id

    return MediaSource(root=settings.data_root(), resolve_file=resolve)


def _chunk(text: str, version: str) -> dict[str, Any]:
    """A streamed ``GenerateContentResponse`` chunk: the text new since the previous one."""
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
        "modelVersion": version,
    }


IMPORT_WAIT_SECONDS = 300.0
LAZY_CLASSES = ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "PreTrainedTokenizerFast")


def _import_transformers(done: threading.Event) -> None:
    """Import transformers and the lazily loaded classes tunery uses, on one thread, before any op runs: two threads
    that first touch ``transformers.AutoTokenizer`` at the same moment (a restarted checker's warm-up and the first
    upload's check) could see it half made, and one of them failed with 'cannot import name AutoTokenizer' (found
    by benchmarks/soak.py). An import that fails here fails again in the op that needs it, which reports it."""
    try:
        import transformers

        for name in LAZY_CLASSES:
            getattr(transformers, name)
    except Exception:  # noqa: BLE001, S110 - reported by the op that imports it again
        pass
    finally:
        done.set()


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
    """The engine generates from text; media parts are refused by field, all at once. A PDF is taken: a text
    model reads its text layer, page by page (``tunery.data.documents``), as it does in training."""
    problems = [
        (
            f"contents[{i}].parts[{j}].{part.kind}",
            f"model {_version(model)} takes text only (modalities: text; PDFs as their text), not {part.modality}",
        )
        for i, turn in enumerate(example.turns)
        for j, part in enumerate(turn.parts)
        if part.kind != "text" and part.modality != "pdf"
    ]
    if problems:
        raise request_error(what, problems)


def _is_vlm(request: dict[str, Any]) -> bool:
    from tunery.serving.multimodal import is_vision_language

    return is_vision_language(str(request.get("model") or ""))


def _outcome_of(work: Callable[[], Generation]) -> Generation | BaseException:
    try:
        return work()
    except Exception as exc:
        return exc


def outcome(work: Callable[[], Any]) -> dict[str, Any]:
    """``{"ok": true, "result": work()}``, or ``{"ok": false, "error": ...}`` for what it raised; never raises."""
    try:
        return {"ok": True, "result": work()}
    except Exception as exc:
        return _failure(exc)


def _failure(exc: BaseException) -> dict[str, Any]:
    """The ``ok: false`` reply for an exception: a ``TuneryError``'s own status (``tunery.errors.http_status``:
    404 not found, 400 other user errors...), 499 cancelled, else 500 (its traceback on stderr)."""
    if isinstance(exc, Cancelled):
        return {"ok": False, "error": {"code": CANCELLED, "type": "Cancelled", "message": str(exc)}}
    if isinstance(exc, TuneryError) and not isinstance(exc, ProtocolError):
        return {"ok": False, "error": _user_error(http_status(exc), exc)}
    traceback.print_exception(exc)
    message = f"{type(exc).__name__}: {exc}"
    return {"ok": False, "error": {"code": 500, "type": type(exc).__name__, "message": message}}


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


def main() -> None:
    """Serve requests from stdin until it closes, then answer what is in flight and exit."""
    lifeline.watch_parent()  # the API or CLI that started it died (even by SIGKILL): exit within 0.25 s
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecations are not the operator's
    replies = _claim_stdout()
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        line = json.dumps(message) + "\n"
        with lock:
            try:
                replies.write(line)
                replies.flush()
            except (BrokenPipeError, ValueError):  # the client is gone
                pass

    host = Host(
        send,
        max_models=settings.serving_max_models(),
        max_adapters=settings.serving_max_adapters(),
        max_batch=settings.serving_max_batch(),
        weights=settings.serving_weights(),
        prefill_chunk=settings.serving_prefill_chunk(),
    )
    try:
        for line in iter(sys.stdin.readline, ""):
            if line.strip():
                host.handle_line(line)
        host.drain()
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C in the API's terminal, or the API is gone
        pass
    sys.stdout.flush()
    os._exit(0)  # the decode loop and pools are daemons; nothing is left to wait for


if __name__ == "__main__":
    main()
