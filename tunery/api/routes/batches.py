"""Batch prediction over REST: Vertex's ``batchPredictionJobs`` and OpenAI's ``/v1/batches``, one job kind.

Both create a batch job in the store (``tunery.jobs.batch``); the scheduler runs it in a worker like a
tuning job. The input is an upload (``files/{id}``) or a path under ``TUNERY_DATA_ROOT``. Results are read
back through this router: ``GET /v1/batchPredictionJobs/{id}/predictions`` (Vertex lines), and for OpenAI
``GET /v1/batches/{id}/output`` and ``/errors``, which are also ``GET /v1/files/{id}/content`` of the ids that
``output_file_id`` and ``error_file_id`` give (``file-batch-{job id}-output``, ``-errors``; see ``views.py``).

An OpenAI batch input is an upload with ``purpose="batch"``: ``check_batch_file`` checks each line's envelope
(``custom_id`` of its own, ``method`` POST, ``url``, ``body`` with one ``model`` for the whole file) on upload
and again on ``POST /v1/batches``; a body's other fields are checked when its line runs, so a bad one fails
that line alone (it goes to the error file).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Response
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import SchedulerDep, SettingsDep, StoreDep, Tenant, wake_scheduler
from tunery.api.errors import invalid
from tunery.api.generation import servable
from tunery.api.paths import resolve_base_model, resolve_dataset
from tunery.api.views import openai_batch
from tunery.data.validation import Problem
from tunery.errors import DatasetError, NotFoundError
from tunery.jobs import batch
from tunery.jobs.batch_files import BATCH_PURPOSE, batch_job, check_batch_file, read_results
from tunery.jobs.store import Job, Store, new_id
from tunery.settings import jobs_dir

router = APIRouter(tags=["batchPredictionJobs"])


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
    return _vertex(await run_in_threadpool(batch_job, store, tenant, job_id))


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
    await run_in_threadpool(batch_job, store, tenant, job_id)
    job = await run_in_threadpool(store.request_cancel, tenant, job_id)
    wake_scheduler(scheduler)
    return _vertex(job)


@router.get("/v1/batchPredictionJobs/{job_id}/predictions", summary="The results so far (JSONL)")
async def read_predictions(job_id: str, tenant: Tenant, store: StoreDep) -> Response:
    return await results(store, tenant, job_id, "results")


async def results(store: Store, tenant: str, job_id: str, which: str) -> Response:
    """The result lines that ``done.json`` vouches for (a running worker may be writing the next chunk)."""
    return Response(await run_in_threadpool(read_results, store, tenant, job_id, which), media_type="application/jsonl")


# --- OpenAI ----------------------------------------------------------------------------------------------


def _openai_id(batch_id: str) -> str:
    return batch_id.removeprefix("batch_")


def summary(name: str, problems: list[dict[str, Any]]) -> str:
    """``name: N problems: line 2: custom_id: ...; ...`` (the first five), for an error's message."""
    n = len(problems)
    shown = "; ".join(f"line {p['line']}: {p['field'] or 'line'}: {p['message']}" for p in problems[:5])
    return f"{name}: {n} problem{'s' * (n != 1)}: {shown}{'; ...' if n > 5 else ''}"


def _create_openai(store: Store, tenant: str, body: dict[str, Any], settings: Any) -> Job:
    problems = [(name, "required") for name in ("input_file_id", "endpoint") if not body.get(name)]
    if body.get("endpoint") and body["endpoint"] not in batch.OPENAI_URLS:
        problems.append(("endpoint", f"{body['endpoint']!r}: expected one of {', '.join(batch.OPENAI_URLS)}"))
    if problems:
        raise invalid(problems)
    try:
        path, record = resolve_dataset(str(body["input_file_id"]), tenant, store, settings.data_root, "input_file_id")
    except Exception as exc:
        raise invalid([("input_file_id", str(exc))]) from None
    if record is not None and record.stats.get("purpose") != BATCH_PURPOSE:
        raise invalid([("input_file_id", f"files/{record.id} is a tuning dataset (purpose 'fine-tune'): upload the "
                        "requests with purpose 'batch'")])  # fmt: skip
    report = check_batch_file(path, str(body["endpoint"]))
    if report["problems"]:
        found = report["problems"]
        raise DatasetError(summary("input_file_id", found), [Problem("input_file_id", **p) for p in found])
    model = body.get("model") or report["model"]
    return _create(store, tenant, str(model), str(body["input_file_id"]), body, settings, "input_file_id")


@router.post("/v1/batches", summary="Create a batch (OpenAI)")
async def create_batch(
    tenant: Tenant, store: StoreDep, scheduler: SchedulerDep, settings: SettingsDep, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """``{input_file_id, endpoint: "/v1/chat/completions", completion_window: "24h", metadata?}``."""
    job = await run_in_threadpool(_create_openai, store, tenant, body, settings)
    wake_scheduler(scheduler)
    return openai_batch(job)


@router.get("/v1/batches/{batch_id}", summary="Read a batch (OpenAI)")
async def read_batch(batch_id: str, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return openai_batch(await run_in_threadpool(batch_job, store, tenant, _openai_id(batch_id)))


@router.get("/v1/batches", summary="List batches (OpenAI)")
async def read_batches(tenant: Tenant, store: StoreDep, limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    jobs, _ = await run_in_threadpool(lambda: store.list_jobs(tenant, page_size=limit, batch=True))
    data = [openai_batch(job) for job in jobs if job.spec.get("request", {}).get("input_file_id")]  # not Vertex's
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": False}  # fmt: skip


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch (OpenAI)")
async def cancel_batch(batch_id: str, tenant: Tenant, store: StoreDep, scheduler: SchedulerDep) -> dict[str, Any]:
    job_id = _openai_id(batch_id)
    await run_in_threadpool(batch_job, store, tenant, job_id)
    job = await run_in_threadpool(store.request_cancel, tenant, job_id)
    wake_scheduler(scheduler)
    return openai_batch(job)


@router.get("/v1/batches/{batch_id}/output", summary="A batch's output file (OpenAI lines)")
async def read_batch_output(batch_id: str, tenant: Tenant, store: StoreDep) -> Response:
    return await results(store, tenant, _openai_id(batch_id), "results")


@router.get("/v1/batches/{batch_id}/errors", summary="A batch's error file (OpenAI lines)")
async def read_batch_errors(batch_id: str, tenant: Tenant, store: StoreDep) -> Response:
    return await results(store, tenant, _openai_id(batch_id), "errors")
