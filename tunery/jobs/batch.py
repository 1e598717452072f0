"""Batch prediction: a JSONL of requests in, a JSONL of results out, each line answered exactly once.

Two input forms, told apart per line:

    {"request": {"contents": [...], "systemInstruction": ..., "generationConfig": ...}}       # Vertex
    {"custom_id": "a1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}      # OpenAI

Vertex results (``predictions.jsonl``): each line is the input line plus ``response`` (a
GenerateContentResponse) or ``status`` (why that line failed). OpenAI results: ``output.jsonl`` lines
``{id, custom_id, response: {status_code, request_id, body}, error: null}`` and, for the lines that
failed, ``errors.jsonl`` lines with ``error {code, message}`` (and the ``response`` an HTTP call would have
got: its 4xx/5xx ``status_code`` and ``body.error``). A bad line fails that line, never the job.

A batch prediction job is a row of the job store like a tuning job (``tuning_mode`` ``BATCH_PREDICTION``),
run by the same scheduler and worker (``python -m tunery.jobs.worker ID`` hands it to ``run_job``): states,
progress events (lines done, tokens/s, ETA), cancel, and resume. Results are appended in input order, a
chunk at a time; after each chunk is on disk, ``done.json`` records how many lines are done and how many
bytes each result file holds then. A worker killed at any moment leaves at most a partial chunk past
those sizes: the next run cuts it off and goes on from the next line, so no line is lost or answered twice.

``tunery predict MODEL --input requests.jsonl --output results.jsonl`` runs the same loop without a store.

Media parts: a ``fileData`` part naming a path is read into ``inlineData`` before its line is sent (so the
model host gets the bytes): relative to the input file's folder from the CLI, under ``TUNERY_DATA_ROOT`` (and
``files/{id}`` uploads of the job's tenant) in a server's job. A file that cannot be read fails its line.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.errors import DatasetError, JobError, TuneryError

if TYPE_CHECKING:
    from tunery.serving.process import GenerationHost

BATCH_MODE = "BATCH_PREDICTION"
VERTEX, OPENAI = "vertex", "openai"
CHUNK_LINES = 8  # lines sent to the model host together (its continuous batching decodes them at once)
DONE_FILE = "done.json"
RESULT_FILES = {VERTEX: "predictions.jsonl", OPENAI: "output.jsonl"}
ERRORS_FILE = "errors.jsonl"
OPENAI_URLS = ("/v1/chat/completions", "/v1/completions")

Generate = Callable[[list[dict[str, Any]]], list[dict[str, Any] | BaseException]]
"""Gemini generateContent bodies → each one's GenerateContentResponse, or the error it failed with."""


@dataclass
class BatchSpec:
    """What a batch prediction job runs: the model (as the model host names it), the input, where results go."""

    model: str
    input: str
    output: str  # a directory
    display_name: str = ""
    model_version: str | None = None  # the model's name in each response (the tuned model's id, say)
    labels: dict[str, str] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)  # the create request, as sent

    # what Store.create_job reads of a spec
    @property
    def base_model(self) -> str:
        return self.model

    @property
    def method(self) -> str:
        return BATCH_MODE

    def to_dict(self) -> dict[str, Any]:
        return {"kind": BATCH_MODE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSpec:
        return cls(**{k: v for k, v in data.items() if k != "kind"})


# --- one line ------------------------------------------------------------------------------------------


@dataclass
class Line:
    """One input line: its form, its key (OpenAI's custom_id), the Gemini request, or why it cannot run."""

    number: int
    raw: Any
    form: str
    key: str | None = None
    request: dict[str, Any] | None = None
    error: str | None = None
    code: int = 400
    chat: bool = True  # OpenAI: chat completion (else text completion)


def parse_line(text: str, number: int, form: str = VERTEX) -> Line:
    """A line of the input, checked as the matching route checks its body; problems become the line's error.
    A line that is no JSON object is answered in the file's ``form``."""
    from tunery.serving.gemini import parse_generate_request

    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return Line(number, text, form, error=f"line {number}: not JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(raw, dict):
        return Line(number, raw, form, error=f"line {number}: expected a JSON object")
    if "custom_id" in raw or "body" in raw:
        return _openai_line(raw, number)
    if "request" not in raw:
        return Line(number, raw, VERTEX, error=f"line {number}: expected {{\"request\": {{...}}}} (Vertex) or "
                    "{\"custom_id\", \"method\", \"url\", \"body\"} (OpenAI)")  # fmt: skip
    try:
        parse_generate_request(raw["request"])
    except DatasetError as exc:
        return Line(number, raw, VERTEX, error=f"line {number}: {_problems(exc)}")
    return Line(number, raw, VERTEX, request=raw["request"])


def _openai_line(raw: dict[str, Any], number: int) -> Line:
    key = raw.get("custom_id")
    line = Line(number, raw, OPENAI, key=key if isinstance(key, str) else None)
    missing = [name for name in ("custom_id", "method", "url", "body") if name not in raw]
    if missing:
        line.error = f"line {number}: missing {', '.join(missing)}"
    elif raw["method"] != "POST" or raw["url"] not in OPENAI_URLS:
        line.error = f"line {number}: {raw['method']} {raw['url']}: expected POST {' or '.join(OPENAI_URLS)}"
    if line.error:
        return line
    from pydantic import ValidationError

    from tunery.serving import openai as shapes  # the OpenAI → Gemini translation the routes use (no torch)

    line.chat = raw["url"] == OPENAI_URLS[0]
    try:
        if line.chat:
            body, origin = shapes.chat_body(shapes.ChatCompletionRequest.model_validate(raw["body"]))
            shapes.check(body, origin)
        else:
            body = shapes.completion_body(shapes.CompletionRequest.model_validate(raw["body"]))
            shapes.check(body)
    except ValidationError as exc:
        where = "; ".join(f"body.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        line.error = f"line {number}: {where}"
        return line
    except DatasetError as exc:  # every field at fault, in one line
        line.error = f"line {number}: {exc.args[0]}"
        return line
    except TuneryError as exc:
        line.error = f"line {number}: {exc}"
        return line
    line.request = body
    return line


def _problems(exc: DatasetError) -> str:
    return "; ".join(f"{p.field}: {p.message}" for p in exc.problems) or str(exc)


def answer(line: Line, outcome: dict[str, Any] | BaseException | None, model: str) -> tuple[dict[str, Any], bool]:
    """The result record of a line and whether it succeeded."""
    failed = outcome is None or isinstance(outcome, BaseException)
    if line.form == VERTEX:
        record = dict(line.raw) if isinstance(line.raw, dict) else {"request": line.raw}
        if failed:
            record["status"] = line.error or f"{type(outcome).__name__}: {outcome}"
        else:
            record["response"] = outcome
        return record, not failed
    ident = f"batch_req_{secrets.token_hex(12)}"
    if failed:
        code = getattr(outcome, "code", None) if outcome is not None else None
        status = int(code) if isinstance(code, int) and code >= 400 else (400 if line.error else 500)
        message = line.error or str(outcome)
        error = {"code": "invalid_request" if status == 400 else "server_error", "message": message}
        kind = "invalid_request_error" if status < 500 else "server_error"  # the body an HTTP call would get
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        response = {"status_code": status, "request_id": ident, "body": body}
        return {"id": ident, "custom_id": line.key, "response": response, "error": error}, False
    assert isinstance(outcome, dict)
    from tunery.serving.openai import response_body

    body = response_body(outcome, model, line.chat)
    response = {"status_code": 200, "request_id": ident, "body": body}
    return {"id": ident, "custom_id": line.key, "response": response, "error": None}, True


# --- the results on disk -------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a batch stands: lines done of the total, how many failed, tokens generated, speed and ETA."""

    total: int
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    output_tokens: int = 0
    seconds: float = 0.0  # spent generating, over every run

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.done or self.done >= self.total:
            return 0.0 if self.done >= self.total else None
        return self.seconds / self.done * (self.total - self.done)

    def to_dict(self) -> dict[str, Any]:
        return {
            "linesTotal": self.total,
            "linesDone": self.done,
            "successfulCount": self.succeeded,
            "failedCount": self.failed,
            "incompleteCount": self.total - self.done,
            "outputTokens": self.output_tokens,
            "tokensPerSecond": round(self.tokens_per_second, 2),
            "etaSeconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
        }


class Results:
    """The result files of one batch, appended a chunk at a time, and ``done.json``, which says how far."""

    def __init__(self, directory: str | Path, form: str, total: int, names: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.form = form
        names = {"results": RESULT_FILES[form], "errors": ERRORS_FILE, "done": DONE_FILE, **(names or {})}
        self.paths = {"results": self.directory / names["results"]}
        if form == OPENAI:
            self.paths["errors"] = self.directory / names["errors"]
        self.done_path = self.directory / names["done"]
        self.progress = Progress(total)
        self.sizes = {name: 0 for name in self.paths}
        done = self.done_path
        if done.is_file():
            state = json.loads(done.read_text(encoding="utf-8"))
            self.sizes.update(state["sizes"])
            saved = {k: v for k, v in state["progress"].items() if k != "total"}
            self.progress = Progress(total, **saved)
        for name, path in self.paths.items():  # cut off what a killed run wrote past the last record
            with path.open("ab") as fh:
                fh.truncate(self.sizes[name])

    def append(self, records: list[tuple[str, dict[str, Any]]], succeeded: int, tokens: int, seconds: float) -> None:
        """Write one chunk's records (``(file, record)``), then record the chunk as done; both synced to disk."""
        for name, path in self.paths.items():
            lines = [json.dumps(r, ensure_ascii=False) + "\n" for n, r in records if n == name]
            with path.open("ab") as fh:
                fh.write("".join(lines).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
                self.sizes[name] = fh.tell()
        p = self.progress
        p.done += len(records)
        p.succeeded += succeeded
        p.failed += len(records) - succeeded
        p.output_tokens += tokens
        p.seconds += seconds
        state = {"sizes": self.sizes, "progress": {k: v for k, v in asdict(p).items() if k != "total"}}
        tmp = self.done_path.with_name(f".{self.done_path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(state))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.done_path)


def input_form(path: str | Path) -> str:
    """The form of a batch input file, from its first line that is a JSON object (Vertex if none is)."""
    for text in _lines(path):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(raw, dict):
            return OPENAI if "custom_id" in raw or "body" in raw else VERTEX
    return VERTEX


def _lines(path: str | Path) -> Iterator[str]:
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for text in fh:
            if text.strip():
                yield text


def count_lines(path: str | Path) -> int:
    return sum(1 for _ in _lines(path))


def run_batch(
    spec: BatchSpec,
    generate: Generate,
    on_progress: Callable[[Progress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    names: dict[str, str] | None = None,
    media: Any = None,
) -> Progress:
    """Answer every line of ``spec.input`` not answered yet, a chunk at a time; returns where it stopped.
    ``names`` renames the files in ``spec.output`` (``results``, ``errors``, ``done``); ``media`` (a
    ``tunery.data.media.MediaSource``) is where ``fileData`` paths resolve (None: they go to the model as given)."""
    if not Path(spec.input).is_file():
        raise JobError(f"batch input {spec.input} does not exist")
    form = input_form(spec.input)
    results = Results(spec.output, form, count_lines(spec.input), names)
    model = spec.model_version or Path(spec.model).name
    lines = _lines(spec.input)
    for _ in range(results.progress.done):
        next(lines)
    number = results.progress.done
    while not should_stop():
        chunk = [parse_line(text, number + i + 1, form) for i, text in zip(range(CHUNK_LINES), lines)]
        if not chunk:
            break
        number += len(chunk)
        started = time.perf_counter()
        if media is not None:
            for line in chunk:
                _inline(line, media)
        runnable = [line for line in chunk if line.request is not None]
        answers = generate([line.request for line in runnable]) if runnable else []  # type: ignore[misc]
        outcomes = {id(line): outcome for line, outcome in zip(runnable, answers, strict=True)}
        records, succeeded, tokens = [], 0, 0
        for line in chunk:
            outcome = outcomes.get(id(line))
            record, ok = answer(line, outcome, model)
            succeeded += ok
            if ok and isinstance(outcome, dict):
                tokens += int((outcome.get("usageMetadata") or {}).get("candidatesTokenCount", 0))
            records.append(("results" if ok or form == VERTEX else "errors", record))
        results.append(records, succeeded, tokens, time.perf_counter() - started)
        on_progress(results.progress)
    return results.progress


def _inline(line: Line, media: Any) -> None:
    """Read the line's ``fileData`` paths into ``inlineData`` (``tunery.serving.multimodal.inline_request``); a
    file that cannot be read becomes the line's error."""
    from tunery.serving.multimodal import inline_request

    if line.request is None:
        return
    try:
        line.request = inline_request(line.request, media)
    except DatasetError as exc:
        where = "request." if line.form == VERTEX else ""
        line.request, line.error = None, f"line {line.number}: {where}{exc}"


def media_uploads(store: Any, tenant: str) -> Callable[[str], str]:
    """``files/{id}`` → the path of one of ``tenant``'s media uploads (an image, audio or PDF file, typed when it
    was uploaded); a JSONL dataset upload or another tenant's file is not media (``MediaError``)."""
    from tunery.data.media import MediaError

    def resolve(file_id: str) -> str:
        try:
            record = store.get_file(tenant, file_id)
        except TuneryError:
            raise MediaError(f"files/{file_id[:40]} not found (upload it with POST /v1/files)") from None
        if "mimeType" not in (record.stats or {}):
            raise MediaError(f"files/{file_id[:40]} is a JSONL dataset, not an image, audio or PDF file")
        return str(record.path)

    return resolve


def host_generate(host: GenerationHost, model: str, model_version: str | None = None) -> Generate:
    """``Generate`` on a ``ModelHost``: the chunk goes to it as one generateBatch (decoded together)."""

    def generate(requests: list[dict[str, Any]]) -> list[dict[str, Any] | BaseException]:
        items = [{"model": model, "request": r, "modelVersion": model_version} for r in requests]
        return list(host.generate_batch(items))

    return generate


# --- as a job in the store -----------------------------------------------------------------------------


def create(store: Any, tenant: str, spec: BatchSpec, owner: str | None = None, job_id: str | None = None) -> Any:
    """A PENDING batch prediction job in ``store`` (the scheduler, or ``submit``, starts its worker)."""
    from tunery.jobs.store import new_id

    job_id = job_id or new_id()
    if not spec.display_name:
        spec.display_name = job_id
    request = spec.request or {"model": spec.model}
    job, _ = store.create_job(tenant, spec, request, job_id=job_id, owner=owner)  # type: ignore[arg-type]
    return job


def run_job(store: Any, job: Any, watch_parent: bool = False) -> int:
    """A worker's run of a batch job: answer the lines left, record progress; the exit status for the worker."""
    from tunery.jobs.stopping import StopRequests
    from tunery.jobs.store import CANCELLED, CODE_CANCELLED, CODE_INVALID_ARGUMENT, EXIT_INTERRUPTED, FAILED, SUCCEEDED
    from tunery.serving.process import ModelHost
    from tunery.settings import jobs_dir, vllm_server

    spec = BatchSpec.from_dict(job.spec)
    stop = StopRequests(store, job.id, watch_parent)
    store.add_event(job.id, "state", f"attempt {max(job.attempts, 1)}: predicting", None)  # counted at its start

    def on_progress(progress: Progress) -> None:
        stats = progress.to_dict()
        store.update_job(job.id, stats=stats)
        store.add_event(job.id, "metrics", None, stats)

    vllm = vllm_server()
    if vllm is not None:  # tunery serve --engine vllm: the lines go to its vLLM server
        from tunery.serving.vllm import VllmHost

        host: GenerationHost = VllmHost.connect(*vllm)
    else:
        host = ModelHost(log_path=jobs_dir() / job.id / "host.log")
    try:
        from tunery.data.media import MediaSource
        from tunery.settings import data_root

        media = MediaSource(root=data_root(), resolve_file=media_uploads(store, job.tenant))
        generate = host_generate(host, spec.model, spec.model_version)
        progress = run_batch(spec, generate, on_progress, stop, media=media)
    except TuneryError as exc:
        store.end_job(job.id, FAILED, error={"code": CODE_INVALID_ARGUMENT, "message": str(exc)}, message=str(exc))
        return 1
    finally:
        host.close()
    if progress.done >= progress.total:
        message = f"{progress.succeeded} of {progress.total} lines answered, {progress.failed} failed"
        store.end_job(job.id, SUCCEEDED, stats=progress.to_dict(), message=message)
        return 0
    if store.get_job(None, job.id).cancel_requested:
        message = f"cancelled after {progress.done} of {progress.total} lines"
        store.end_job(job.id, CANCELLED, error={"code": CODE_CANCELLED, "message": message}, message=message)
        return 0
    # stopped by its server: not a failed run (the scheduler counts runs before they start)
    store.give_back_attempt(job.id, f"interrupted after {progress.done} of {progress.total} lines; to resume")
    return EXIT_INTERRUPTED


def resource(job: Any) -> dict[str, Any]:
    """Vertex's ``BatchPredictionJob`` for a batch job row."""
    from tunery.jobs.store import CANCELLING, PENDING, RUNNING

    spec = BatchSpec.from_dict(job.spec)
    state = CANCELLING if job.cancel_requested and job.state in (PENDING, RUNNING) else job.state
    stats = job.stats or {}
    out: dict[str, Any] = {
        "name": f"batchPredictionJobs/{job.id}",
        "displayName": job.display_name,
        "model": spec.model_version or spec.model,
        "inputConfig": spec.request.get("inputConfig", {}),
        "outputConfig": spec.request.get("outputConfig", {}),
        "state": state,
        "createTime": job.create_time,
        "updateTime": job.update_time,
        "labels": job.labels,
        "completionStats": {k: str(stats.get(k, 0)) for k in ("successfulCount", "failedCount", "incompleteCount")},
        "progress": stats,
    }
    for key, value in (("startTime", job.start_time), ("endTime", job.end_time), ("error", job.error)):
        if value:
            out[key] = value
    return out


def is_batch(job: Any) -> bool:
    return job.tuning_mode == BATCH_MODE
