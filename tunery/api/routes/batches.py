"""Batch prediction over REST: Vertex's ``batchPredictionJobs`` and OpenAI's ``/v1/batches``, one job kind.

Both create a batch job in the store (``tunery.jobs.batch``); the scheduler runs it in a worker like a
tuning job. The input is an upload (``files/{id}``) or a path under ``TUNERY_DATA_ROOT``. Results are read
back through this router: ``GET /v1/batchPredictionJobs/{id}/predictions`` (Vertex lines), and for OpenAI
``GET /v1/batches/{id}/output`` and ``/errors`` (the lines ``output_file_id`` and ``error_file_id`` name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Query, Response
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import SchedulerDep, SettingsDep, StoreDep, Tenant, wake_scheduler
from tunery.api.errors import invalid
from tunery.api.generation import servable
from tunery.api.paths import resolve_base_model, resolve_dataset
from tunery.errors import NotFoundError
from tunery.jobs import batch
from tunery.jobs.store import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, Job, Store, new_id
from tunery.settings import jobs_dir

router = APIRouter(tags=["batchPredictionJobs"])

OPENAI_STATUS = {PENDING: "validating", RUNNING: "in_progress", SUCCEEDED: "completed", FAILED: "failed",
                 CANCELLED: "cancelled"}  # fmt: skip


def _job(store: Store, tenant: str, job_id: str) -> Job:
    job = store.get_job(tenant, job_id)
    if not batch.is_batch(job):
        raise NotFoundError(f"batchPredictionJobs/{job_id} not found")
    return job


def _create(
    store: Store, tenant: str, model_id: str, source: str, request: dict[str, Any], settings: Any, field: str
) -> Job:
    """A batch job for ``model_id`` over the file ``source`` names; 400 naming the field when either is wrong."""
    problems: list[tuple[str, str]] = []
    model_id = model_id.removeprefix("models/").rsplit("/models/", 1)[-1]
    model = model_id
    try:
        model = servable(model_id, tenant, store)
    except NotFoundError:
        try:  # a base model directory under the data root, as a tuning job's baseModel may be
            model = resolve_base_model(model_id, settings.data_root, "model")
        except Exception:
            problems.append(("model", f"{model_id!r}: no such base model, tuned model or model directory"))
    try:
        path, _ = resolve_dataset(source, tenant, store, settings.data_root, field)
    except Exception as exc:  # ConfigError and the like, each named by its field
        problems.append((field, str(exc)))
    if problems:
        raise invalid(problems)
    job_id = new_id()
    spec = batch.BatchSpec(
        model=model,
        input=path,
        output=str(jobs_dir() / job_id / "results"),
        display_name=str(request.get("displayName") or job_id),
        model_version=model_id,
        labels=dict(request.get("labels") or request.get("metadata") or {}),
        request=request,
    )
    return batch.create(store, tenant, spec, job_id=job_id)


# --- Vertex ----------------------------------------------------------------------------------------------


@router.post("/v1/batchPredictionJobs", summary="Create a batch prediction job (Vertex)")
@router.post("/v1/projects/{project}/locations/{location}/batchPredictionJobs", include_in_schema=False)
async def create_batch_prediction_job(
    tenant: Tenant, store: StoreDep, scheduler: SchedulerDep, settings: SettingsDep, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """``{displayName, model, inputConfig: {instancesFormat: "jsonl", gcsSource: {uris: [files/{id}]}}}``."""
    uris = ((body.get("inputConfig") or {}).get("gcsSource") or {}).get("uris") or []
    problems = [] if body.get("model") else [("model", "required: a base model or models/{tuned model id}")]
    if len(uris) != 1 or not isinstance(uris[0], str):
        problems.append(("inputConfig.gcsSource.uris", "required: one files/{id} or data-root path"))
    if problems:
        raise invalid(problems)
    job = await run_in_threadpool(
        _create, store, tenant, str(body["model"]), uris[0], body, settings, "inputConfig.gcsSource.uris[0]"
    )
    wake_scheduler(scheduler)
    return _vertex(job)


def _vertex(job: Job) -> dict[str, Any]:
    resource = batch.resource(job)
    resource["outputInfo"] = {"predictions": f"v1/batchPredictionJobs/{job.id}/predictions"}
    return resource


@router.get("/v1/batchPredictionJobs/{job_id}", summary="Read a batch prediction job (Vertex)")
@router.get("/v1/projects/{project}/locations/{location}/batchPredictionJobs/{job_id}", include_in_schema=False)
async def read_batch_prediction_job(job_id: str, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return _vertex(await run_in_threadpool(_job, store, tenant, job_id))


@router.get("/v1/batchPredictionJobs", summary="List batch prediction jobs (Vertex)")
async def read_batch_prediction_jobs(
    tenant: Tenant, store: StoreDep, page_size: int = Query(50, alias="pageSize", ge=1, le=1000)
) -> dict[str, Any]:
    jobs, _ = await run_in_threadpool(lambda: store.list_jobs(tenant, page_size=page_size, batch=True))
    return {"batchPredictionJobs": [_vertex(job) for job in jobs]}


@router.post("/v1/batchPredictionJobs/{job_id}:cancel", summary="Cancel a batch prediction job (Vertex)")
async def cancel_batch_prediction_job(
    job_id: str, tenant: Tenant, store: StoreDep, scheduler: SchedulerDep
) -> dict[str, Any]:
    await run_in_threadpool(_job, store, tenant, job_id)
    job = await run_in_threadpool(store.request_cancel, tenant, job_id)
    wake_scheduler(scheduler)
    return _vertex(job)


@router.get("/v1/batchPredictionJobs/{job_id}/predictions", summary="The results so far (JSONL)")
async def read_predictions(job_id: str, tenant: Tenant, store: StoreDep) -> Response:
    return await _results(store, tenant, job_id, "results")


async def _results(store: Store, tenant: str, job_id: str, which: str) -> Response:
    """The result lines that ``done.json`` vouches for (a running worker may be writing the next chunk)."""
    job = await run_in_threadpool(_job, store, tenant, job_id)
    spec = batch.BatchSpec.from_dict(job.spec)
    form = await run_in_threadpool(batch.input_form, spec.input)
    path = Path(spec.output) / (batch.RESULT_FILES[form] if which == "results" else batch.ERRORS_FILE)
    done = Path(spec.output) / batch.DONE_FILE
    if not path.is_file() or not done.is_file():
        raise NotFoundError(f"batchPredictionJobs/{job_id} has no {which} yet")

    def read() -> bytes:
        size = json.loads(done.read_text(encoding="utf-8"))["sizes"].get(which, 0)
        with path.open("rb") as fh:
            return fh.read(size)

    return Response(await run_in_threadpool(read), media_type="application/jsonl")


# --- OpenAI ----------------------------------------------------------------------------------------------


def _openai(job: Job) -> dict[str, Any]:
    from tunery.api.routes.openai import unix

    stats = job.stats or {}
    status = "cancelling" if job.cancel_requested and not job.has_ended else OPENAI_STATUS.get(job.state, "failed")
    spec = batch.BatchSpec.from_dict(job.spec)
    return {
        "id": f"batch_{job.id}",
        "object": "batch",
        "endpoint": spec.request.get("endpoint", "/v1/chat/completions"),
        "errors": {"object": "list", "data": [job.error]} if job.error else None,
        "input_file_id": spec.request.get("input_file_id"),
        "completion_window": spec.request.get("completion_window", "24h"),
        "status": status,
        "output_file_id": f"batch_{job.id}/output" if stats.get("linesDone") else None,
        "error_file_id": f"batch_{job.id}/errors" if stats.get("failedCount") else None,
        "created_at": unix(job.create_time) or 0,
        "in_progress_at": unix(job.start_time) if job.start_time else None,
        "completed_at": unix(job.end_time) if job.state == SUCCEEDED and job.end_time else None,
        "failed_at": unix(job.end_time) if job.state == FAILED and job.end_time else None,
        "cancelled_at": unix(job.end_time) if job.state == CANCELLED and job.end_time else None,
        "request_counts": {
            "total": stats.get("linesTotal", 0),
            "completed": stats.get("successfulCount", 0),
            "failed": stats.get("failedCount", 0),
        },
        "metadata": job.labels or None,
    }


def _openai_id(batch_id: str) -> str:
    return batch_id.removeprefix("batch_")


def _first_model(path: str) -> str | None:
    """The model the first OpenAI line's body names (a batch runs one model)."""
    for text in batch._lines(path):
        try:
            model = json.loads(text).get("body", {}).get("model")
        except (ValueError, AttributeError):
            continue
        if isinstance(model, str):
            return model
    return None


def _create_openai(store: Store, tenant: str, body: dict[str, Any], settings: Any) -> Job:
    problems = [(name, "required") for name in ("input_file_id", "endpoint") if not body.get(name)]
    if body.get("endpoint") and body["endpoint"] not in batch.OPENAI_URLS:
        problems.append(("endpoint", f"{body['endpoint']!r}: expected one of {', '.join(batch.OPENAI_URLS)}"))
    if problems:
        raise invalid(problems)
    try:
        path, _ = resolve_dataset(str(body["input_file_id"]), tenant, store, settings.data_root, "input_file_id")
    except Exception as exc:
        raise invalid([("input_file_id", str(exc))]) from None
    model = body.get("model") or _first_model(path)
    if not model:
        raise invalid([("input_file_id", "no line's body names a model")])
    return _create(store, tenant, str(model), str(body["input_file_id"]), body, settings, "input_file_id")


@router.post("/v1/batches", summary="Create a batch (OpenAI)")
async def create_batch(
    tenant: Tenant, store: StoreDep, scheduler: SchedulerDep, settings: SettingsDep, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """``{input_file_id, endpoint: "/v1/chat/completions", completion_window: "24h", metadata?}``."""
    job = await run_in_threadpool(_create_openai, store, tenant, body, settings)
    wake_scheduler(scheduler)
    return _openai(job)


@router.get("/v1/batches/{batch_id}", summary="Read a batch (OpenAI)")
async def read_batch(batch_id: str, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return _openai(await run_in_threadpool(_job, store, tenant, _openai_id(batch_id)))


@router.get("/v1/batches", summary="List batches (OpenAI)")
async def read_batches(tenant: Tenant, store: StoreDep, limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    jobs, _ = await run_in_threadpool(lambda: store.list_jobs(tenant, page_size=limit, batch=True))
    data = [_openai(job) for job in jobs]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": False}  # fmt: skip


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch (OpenAI)")
async def cancel_batch(batch_id: str, tenant: Tenant, store: StoreDep, scheduler: SchedulerDep) -> dict[str, Any]:
    job_id = _openai_id(batch_id)
    await run_in_threadpool(_job, store, tenant, job_id)
    job = await run_in_threadpool(store.request_cancel, tenant, job_id)
    wake_scheduler(scheduler)
    return _openai(job)


@router.get("/v1/batches/{batch_id}/output", summary="A batch's output file (OpenAI lines)")
async def read_batch_output(batch_id: str, tenant: Tenant, store: StoreDep) -> Response:
    return await _results(store, tenant, _openai_id(batch_id), "results")


@router.get("/v1/batches/{batch_id}/errors", summary="A batch's error file (OpenAI lines)")
async def read_batch_errors(batch_id: str, tenant: Tenant, store: StoreDep) -> Response:
    return await _results(store, tenant, _openai_id(batch_id), "errors")
