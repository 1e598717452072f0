"""The files of a batch prediction job that the API reads: an OpenAI batch input, checked line by line on upload
and on ``POST /v1/batches`` (``check_batch_file``), and the results read back as far as ``done.json`` vouches
(``read_results``; a running worker may be writing the next chunk).

    report = check_batch_file("requests.jsonl")            # {problems, exampleCount, model}, as the checker reports
    data = read_results(store, tenant, job_id, "errors")   # the bytes of results.jsonl/output.jsonl or errors.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunery.errors import NotFoundError
from tunery.jobs import batch
from tunery.jobs.store import Job, Store

MAX_BATCH_REQUESTS = 50_000  # OpenAI's limit on the requests of one batch
BATCH_PURPOSE = "batch"  # an upload's stats["purpose"]: an OpenAI batch input, not a tuning dataset


def batch_job(store: Store, tenant: str, job_id: str) -> Job:
    """The tenant's batch prediction job ``job_id``; ``NotFoundError`` for any other job."""
    job = store.get_job(tenant, job_id)
    if not batch.is_batch(job):
        raise NotFoundError(f"batchPredictionJobs/{job_id} not found")
    return job


def read_results(store: Store, tenant: str, job_id: str, which: str) -> bytes:
    """The ``results`` (or ``errors``) lines that ``done.json`` vouches for."""
    job = batch_job(store, tenant, job_id)
    spec = batch.BatchSpec.from_dict(job.spec)
    path = Path(spec.output) / (
        batch.RESULT_FILES[batch.input_form(spec.input)] if which == "results" else batch.ERRORS_FILE
    )
    done = Path(spec.output) / batch.DONE_FILE
    if not path.is_file() or not done.is_file():
        raise NotFoundError(f"batchPredictionJobs/{job_id} has no {which} yet")
    size = json.loads(done.read_text(encoding="utf-8"))["sizes"].get(which, 0)
    with path.open("rb") as fh:
        return fh.read(size)


def check_batch_file(path: str | Path, endpoint: str | None = None) -> dict[str, Any]:
    """An OpenAI batch input checked line by line, reported as the dataset checker reports an upload:
    ``problems`` (each with its line and field), ``exampleCount`` (the requests) and the ``model`` every line's
    body names. A line is ``{custom_id, method: "POST", url, body: {model, ...}}``: a ``custom_id`` no other line
    has, a ``url`` tunery answers (``endpoint`` when given: a batch runs one endpoint) and one model for the file."""
    problems: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    model: tuple[str, int] | None = None
    urls = (endpoint,) if endpoint else batch.OPENAI_URLS
    count = 0

    def problem(number: int, name: str, message: str) -> None:
        problems.append({"line": number, "field": name, "message": message, "severity": "error"})

    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, 1):
            if not text.strip():
                continue
            count += 1
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                problem(number, "", f"not JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(raw, dict):
                problem(number, "", "expected a JSON object {custom_id, method, url, body}")
                continue
            key = raw.get("custom_id")
            if not isinstance(key, str) or not key:
                problem(number, "custom_id", f"{_shown(key)}: expected a non-empty string, unique in the file")
            elif key in seen:
                problem(number, "custom_id", f"{key[:64]!r} again (first on line {seen[key]})")
            else:
                seen[key] = number
            if raw.get("method") != "POST":
                problem(number, "method", f"{_shown(raw.get('method'))}: expected 'POST'")
            if raw.get("url") not in urls:
                problem(number, "url", f"{_shown(raw.get('url'))}: expected {' or '.join(map(repr, urls))}")
            body = raw.get("body")
            if not isinstance(body, dict):
                problem(number, "body", f"{_shown(body)}: expected the request body, a JSON object")
                continue
            name = body.get("model")
            if not isinstance(name, str) or not name:
                problem(number, "body.model", f"{_shown(name)}: expected the model that answers, a string")
            elif model is None:
                model = (name, number)
            elif name != model[0]:
                problem(number, "body.model", f"{name[:64]!r}: a batch runs one model, and line {model[1]} names "
                        f"{model[0][:64]!r}")  # fmt: skip
    if not count:
        problem(0, "", "no requests: expected one JSON object a line")
    elif count > MAX_BATCH_REQUESTS:
        problem(0, "", f"{count} requests: a batch takes at most {MAX_BATCH_REQUESTS}")
    return {"problems": problems, "exampleCount": count, "model": model[0] if model else None,
            "supervisedTuningDataStats": {"purpose": BATCH_PURPOSE}}  # fmt: skip


def _shown(value: Any) -> str:
    return "missing" if value is None else repr(value)[:64]
