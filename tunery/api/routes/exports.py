"""Export over REST: ``POST /v1/models/{id}:export`` starts an export job; its files are downloaded when it is done.

    POST /v1/models/{id}:export          {"quant": "q8_0", "adapterOnly": false, "ollama": true}  → exportJobs/{job}
    GET  /v1/exportJobs/{job}            state, progress {fraction, message}, and files with their downloadUri
    GET  /v1/exportJobs/{job}/events     progress events, as a tuning job's
    GET  /v1/exportJobs/{job}/files/{name}   the GGUF or the Modelfile
    POST /v1/exportJobs/{job}:cancel

The job runs in a worker like a tuning job (``tunery.jobs.export``), never in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import PublicUrl, SchedulerDep, SettingsDep, StoreDep, Tenant, wake_scheduler
from tunery.api.errors import invalid
from tunery.api.generation import servable
from tunery.api.paths import resolve_base_model
from tunery.api.schemas import ModelId
from tunery.errors import ConfigError, NotFoundError
from tunery.jobs import export
from tunery.jobs.store import SUCCEEDED, Job, Store, new_id
from tunery.settings import jobs_dir

router = APIRouter(tags=["exportJobs"])

FIELDS = {"quant": str, "adapterOnly": bool, "ollama": bool, "timeoutSeconds": int, "displayName": str}


def _job(store: Store, tenant: str, job_id: str) -> Job:
    job = store.get_job(tenant, job_id)
    if not export.is_export(job):
        raise NotFoundError(f"exportJobs/{job_id} not found")
    return job


def _create(store: Store, tenant: str, model_id: str, body: dict[str, Any], settings: Any) -> Job:
    problems = [(k, f"expected {t.__name__}") for k, t in FIELDS.items() if k in body and type(body[k]) is not t]
    problems += [(k, "unknown field") for k in body if k not in FIELDS]
    if problems:
        raise invalid(problems)
    try:
        model = servable(model_id, tenant, store)
    except NotFoundError:  # a base model directory under the data root, as a batch job's model may be
        try:
            model = resolve_base_model(model_id, settings.data_root, "model")
        except Exception:  # noqa: BLE001 - ConfigError and the like: the model named is not one we have
            raise NotFoundError(f"models/{model_id} not found: no catalog, tuned or data-root model") from None
    job_id = new_id()
    try:
        spec = export.ExportSpec(
            model=model,
            output=str(jobs_dir() / job_id / "export"),
            quant=body.get("quant", "f16"),
            adapter_only=body.get("adapterOnly", False),
            ollama=body.get("ollama", False),
            timeout_seconds=body.get("timeoutSeconds", 1800),
            display_name=body.get("displayName", ""),
            model_name=f"models/{model_id}",
            request={"model": f"models/{model_id}", **body},
        )
    except ConfigError as exc:
        raise invalid([("quant" if "quant" in str(exc) else "timeoutSeconds", str(exc))]) from exc
    (jobs_dir() / job_id).mkdir(parents=True, exist_ok=True)
    return export.create(store, tenant, spec, job_id)


@router.post("/v1/models/{model_id}:export", summary="Export a model to GGUF (and an Ollama Modelfile)")
async def create_export_job(
    model_id: ModelId, tenant: Tenant, store: StoreDep, scheduler: SchedulerDep, base: PublicUrl,
    settings: SettingsDep, body: dict[str, Any] = Body(default_factory=dict),
) -> dict[str, Any]:  # fmt: skip
    job = await run_in_threadpool(_create, store, tenant, model_id, body, settings)
    wake_scheduler(scheduler)
    return export.resource(job, base)


@router.get("/v1/exportJobs/{job_id}", summary="Read an export job")
async def read_export_job(job_id: str, tenant: Tenant, store: StoreDep, base: PublicUrl) -> dict[str, Any]:
    return export.resource(await run_in_threadpool(_job, store, tenant, job_id), base)


@router.get("/v1/exportJobs/{job_id}/events", summary="Read an export job's progress events")
async def read_export_job_events(job_id: str, tenant: Tenant, store: StoreDep, after: int = 0) -> dict[str, Any]:
    await run_in_threadpool(_job, store, tenant, job_id)
    events = await run_in_threadpool(store.events, tenant, job_id, after, 1000)
    return {"events": events}


@router.post("/v1/exportJobs/{job_id}:cancel", summary="Cancel an export job")
async def cancel_export_job(
    job_id: str, tenant: Tenant, store: StoreDep, scheduler: SchedulerDep, base: PublicUrl
) -> dict[str, Any]:
    await run_in_threadpool(_job, store, tenant, job_id)
    job = await run_in_threadpool(store.request_cancel, tenant, job_id)
    wake_scheduler(scheduler)
    return export.resource(job, base)


@router.get("/v1/exportJobs/{job_id}/files/{name}", summary="Download a file an export job wrote")
async def read_export_file(job_id: str, name: str, tenant: Tenant, store: StoreDep) -> FileResponse:
    job = await run_in_threadpool(_job, store, tenant, job_id)
    files = (job.stats or {}).get("files") or {}
    if job.state != SUCCEEDED or name not in files:  # only names the job recorded: no path from the request
        raise NotFoundError(f"exportJobs/{job_id}/files/{name} not found")
    path = Path(export.ExportSpec.from_dict(job.spec).output) / name
    return FileResponse(path, filename=name, media_type="application/octet-stream")
