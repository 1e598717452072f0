"""The REST resource views of the OpenAI, Gemini and Vertex shapes: jobs, files, models, events and checkpoints as
their clients read them, built from the job store's rows (the native view is the rows' own ``resource()``).

    openai_job(job)            # fine_tuning.job          openai_event(event)   # fine_tuning.job.event
    openai_file(record)        # file                     openai_model(resource, tenant)   # model
    openai_batch(job)          # batch                    output_file(file_id)  # a batch's output file id → its job
    file_view(record)          # an upload, in the Gemini and OpenAI fields at once (/v1/files is shared)
    model_view(resource, tenant)   # a model, in the Gemini and OpenAI fields at once (/v1/models is shared)
    tuned_model(job)           # the Gemini API's TunedModel: a tuning job and the model it makes
    base_resource(entry)       # a catalog entry as a model      publisher_model(resource)   # as Vertex names it
    vertex_job(job, parent)    # a tuning job as Vertex AI names it (adapterSize and tuningMode as proto enum names)
    job_view(job, request)     # a tuning job in the native shape, as its tenant sees it
    page_token_for(job)        # the pageToken after a job       page_start(token, tenant, store)   # and back
    checkpoint(job, created, model, checkpoint_id, found)  # fine_tuning.job.checkpoint

Routes import these; no route imports another route for a view.
"""

from __future__ import annotations

import base64
import copy
import re
from datetime import datetime
from typing import Any

from fastapi import Request

from tunery.api.deps import public_url
from tunery.api.errors import invalid
from tunery.api.paths import hide_server_paths
from tunery.errors import NotFoundError
from tunery.jobs.batch import BatchSpec
from tunery.jobs.store import CANCELLED, CANCELLING, FAILED, PENDING, RUNNING, SUCCEEDED, Job, Store, StoredFile
from tunery.models.catalog import CatalogEntry
from tunery.models.tuned import checkpoint_views
from tunery.serving.openai import TUNING_SPECS

STATUSES = {
    PENDING: "queued",
    RUNNING: "running",
    CANCELLING: "running",
    SUCCEEDED: "succeeded",
    FAILED: "failed",
    CANCELLED: "cancelled",
}
OPENAI_BATCH_STATUS = {PENDING: "validating", RUNNING: "in_progress", SUCCEEDED: "completed", FAILED: "failed",
                       CANCELLED: "cancelled"}  # fmt: skip
TUNED_STATES = {SUCCEEDED: "ACTIVE", FAILED: "FAILED", "JOB_STATE_CANCELLED": "FAILED"}
# SupervisedHyperParameters.AdapterSize, by name and by proto number (the SDKs send either)
ADAPTER_SIZE_NAMES = {
    "ADAPTER_SIZE_ONE": 1,
    "ADAPTER_SIZE_TWO": 2,
    "ADAPTER_SIZE_FOUR": 4,
    "ADAPTER_SIZE_EIGHT": 8,
    "ADAPTER_SIZE_SIXTEEN": 16,
    "ADAPTER_SIZE_THIRTY_TWO": 32,
}
ADAPTER_SIZE_OF_RANK = {rank: name for name, rank in ADAPTER_SIZE_NAMES.items()}
OUTPUT_FILE = re.compile(r"file-batch-([0-9a-f]+)-(output|errors)")


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


def checkpoint(job: Job, created: int | None, model: str, checkpoint_id: str, found: dict[str, Any]) -> dict[str, Any]:
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


def openai_batch(job: Job) -> dict[str, Any]:
    """A batch prediction job as OpenAI's ``batch``."""
    stats = job.stats or {}
    status = (
        "cancelling" if job.cancel_requested and not job.has_ended else OPENAI_BATCH_STATUS.get(job.state, "failed")
    )
    spec = BatchSpec.from_dict(job.spec)
    return {
        "id": f"batch_{job.id}",
        "object": "batch",
        "endpoint": spec.request.get("endpoint", "/v1/chat/completions"),
        "errors": {"object": "list", "data": [_batch_error(job.error)]} if job.error else None,
        "input_file_id": spec.request.get("input_file_id"),
        "completion_window": spec.request.get("completion_window", "24h"),
        "status": status,
        "output_file_id": output_file_id(job, "output") if stats.get("successfulCount") else None,
        "error_file_id": output_file_id(job, "errors") if stats.get("failedCount") else None,
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


def _batch_error(error: dict[str, Any]) -> dict[str, Any]:
    """A job's error as OpenAI's ``BatchError`` (``code`` a string)."""
    return {"code": str(error.get("code", "")), "message": error.get("message", ""), "param": None, "line": None}


def output_file_id(job: Job, which: str) -> str:
    """The OpenAI file id of a batch's ``output`` or ``errors`` file (a file id has no slash)."""
    return f"file-batch-{job.id}-{which}"


def output_file(file_id: str) -> tuple[str, str] | None:
    """``(job id, "results" | "errors")`` for an id ``output_file_id`` made, else None."""
    found = OUTPUT_FILE.fullmatch(file_id)
    if found is None:
        return None
    return found[1], "results" if found[2] == "output" else "errors"


def file_view(record: StoredFile) -> dict[str, Any]:
    """The file with OpenAI's ``FileObject`` fields too: OpenAI's client uploads to this same path (#12)."""
    return {**record.resource(), **openai_file(record)}


def model_view(resource: dict[str, Any], tenant: str) -> dict[str, Any]:
    """A model resource with OpenAI's ``id``, ``object``, ``created`` and ``owned_by`` too (the path is shared)."""
    return {**resource, **openai_model(resource, tenant)}


def tuned_model(job: Job) -> dict[str, Any]:
    """A job as the Gemini API's ``TunedModel``: ``CREATING`` until it has succeeded (``ACTIVE``)."""
    spec = job.request.get("supervisedTuningSpec", {})
    resource: dict[str, Any] = {
        "name": f"tunedModels/{job.id}",
        "displayName": job.display_name,
        "baseModel": f"models/{job.request.get('baseModel', job.base_model)}",
        "state": TUNED_STATES.get(job.state, "CREATING"),
        "createTime": job.create_time,
        "updateTime": job.update_time,
        "tuningTask": {"hyperparameters": dict(spec.get("hyperParameters", {}))},
        "tuningJob": f"tuningJobs/{job.id}",
    }
    if job.start_time:
        resource["tuningTask"]["startTime"] = job.start_time
    if job.end_time:
        resource["tuningTask"]["completeTime"] = job.end_time
    if job.error:
        resource["error"] = job.error
    elif job.state == "JOB_STATE_CANCELLED":
        resource["error"] = {"code": 1, "message": "the tuning job was cancelled"}
    return resource


# --- models and Vertex AI's names -------------------------------------------------------------------------


def base_resource(entry: CatalogEntry) -> dict[str, Any]:
    """A catalog entry as a model resource."""
    return {
        "name": f"models/{entry.id}",
        "displayName": entry.id,
        "description": entry.description,
        "source": entry.source,
        "modalities": list(entry.modalities),
        "contextLength": entry.context_length,
        "defaultLearningRates": dict(entry.learning_rates),
        **({"memoryGiB": entry.memory_gib} if entry.memory_gib else {}),
    }


def publisher_model(resource: dict[str, Any]) -> dict[str, Any]:
    """A model resource as Vertex names a publisher model."""
    return {**resource, "name": "publishers/google/" + resource["name"]}


def vertex_job(job: Job, parent: str) -> dict[str, Any]:
    """A job as Vertex AI names it under ``parent`` (``projects/{p}/locations/{l}``, or nothing in express
    mode): its tuned model is ``{parent}/models/{id}``, answering at ``{parent}/endpoints/{id}``, and its
    spec says ``adapterSize`` and ``tuningMode`` as proto enum names."""
    resource = job.resource(api_base="")
    prefix = f"{parent}/" if parent else ""
    resource["name"] = f"{prefix}tuningJobs/{job.id}"
    if job.tuned_model_id:
        model = f"{prefix}models/{job.tuned_model_id}"
        resource["tunedModel"] = {"model": model, "endpoint": f"{prefix}endpoints/{job.tuned_model_id}"}
        if not parent:  # express mode names a model without a project: google-genai calls models/{id}
            resource["tunedModel"]["endpoint"] = model
        resource["tunedModel"].update(checkpoint_views(job.output, model))
    key = "preferenceOptimizationSpec" if "preferenceOptimizationSpec" in resource else "supervisedTuningSpec"
    spec = copy.deepcopy(resource.get(key, {}))
    hyper = spec.get("hyperParameters")
    if isinstance(hyper, dict) and hyper.get("adapterSize") in ADAPTER_SIZE_OF_RANK:
        hyper["adapterSize"] = ADAPTER_SIZE_OF_RANK[hyper["adapterSize"]]
    spec["tuningMode"] = f"TUNING_MODE_{job.tuning_mode}"
    resource[key] = spec
    return resource


# --- list pages -------------------------------------------------------------------------------------------


def page_token_for(job: Job) -> str:
    """The token of the page after ``job``: its id, opaque to clients, meaningful to its own tenant only (the
    store's sequence numbers, which count every tenant's jobs, never leave the server)."""
    return base64.urlsafe_b64encode(f"after:{job.id}".encode()).decode().rstrip("=")


def page_start(token: str, tenant: str, store: Store) -> str:
    """The store's page token for a client's ``pageToken``; 400 for one this server did not give this tenant."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        job_id = text.removeprefix("after:")
        if not text.startswith("after:") or not re.fullmatch(r"[0-9A-Za-z_-]{1,128}", job_id):
            raise ValueError(text)
        return str(store.get_job(tenant, job_id).seq)
    except (ValueError, NotFoundError):
        raise invalid([("pageToken (query)", "not a page token this server gave you")]) from None


def job_view(job: Job, request: Request) -> dict[str, Any]:
    """A tuning job in the native shape as its tenant sees it: URLs under the public base URL, no server paths in
    its error."""
    resource = job.resource(api_base=public_url(request))
    error = resource.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        error["message"] = hide_server_paths(error["message"], request.app.state.settings.data_root)
    return resource
