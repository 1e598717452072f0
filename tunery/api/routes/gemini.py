"""Gemini API paths beyond ``/v1/models/{m}:generateContent``: the stream, other API versions, and ``tunedModels``.

    POST /v1/models/{m}:streamGenerateContent?alt=sse      each event a whole GenerateContentResponse
    POST /v1/models/{m}:streamGenerateContent              the same chunks as one JSON array
    POST /v1beta/models/{m}:generateContent (and :countTokens, :streamGenerateContent)
    POST /v1/tunedModels   GET /v1/tunedModels[/{id}]   POST /v1/tunedModels/{id}:generateContent

``tunedModels/{id}`` is the Gemini API's name for a tuning job and the model it makes; here it is a view of
``tuningJobs/{id}`` (the same id, the same job), and its training examples become an upload checked exactly
as ``POST /v1/files`` checks one. The prediction paths are rows of ``tunery.api.predict.ALIASES``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from tunery.api import limits, translate
from tunery.api.deps import CheckerDep, SchedulerDep, SettingsDep, StoreDep, Tenant
from tunery.api.errors import invalid
from tunery.api.kept_files import check_and_keep
from tunery.api.predict import GeminiVersion as Version
from tunery.api.predict import add_routes
from tunery.api.schemas import (
    DisplayName,
    ErrorResponse,
    GeminiRequest,
    ModelId,
    Text,
    Uri,
)
from tunery.api.uploads import Upload
from tunery.api.views import page_start, page_token_for, tuned_model

router = APIRouter(tags=["gemini"])

MAX_EXAMPLES = 100_000


add_routes(router, "gemini")  # /v1/models/{m}:streamGenerateContent and the v1beta paths (tunery.api.predict)


# --- tunedModels: the Gemini API's view of a tuning job ---------------------------------------------------

TUNED_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request: every field at fault is named"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "No such tuned model for this tenant"},
}


class TuningExample(GeminiRequest):
    text_input: Text
    output: Text


class TuningExamples(GeminiRequest):
    examples: list[TuningExample] = Field(min_length=1, max_length=MAX_EXAMPLES)


class TuningDataset(GeminiRequest):
    examples: TuningExamples


class TuningHyperparameters(GeminiRequest):
    """The Gemini API's names; ranges are checked by the tuning job's own schema."""

    epoch_count: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    learning_rate: float | None = Field(None, description="Not supported (400): give learningRateMultiplier.")


class TuningTask(GeminiRequest):
    training_data: TuningDataset
    hyperparameters: TuningHyperparameters | None = None


class CreateTunedModelRequest(GeminiRequest):
    """Gemini's ``tunedModels.create``: a base model and inline ``{textInput, output}`` examples."""

    base_model: Uri
    display_name: DisplayName | None = None
    description: Annotated[str, StringConstraints(max_length=limits.MAX_DISPLAY_NAME * 8)] | None = None
    tuning_task: TuningTask


def _examples_file(
    body: CreateTunedModelRequest, tenant: str, store: Any, settings: Any, checker: Any, base_model: str
) -> str:
    """The inline examples written as a Gemini-form dataset and kept as an upload, checked exactly as
    ``POST /v1/files`` checks a file; its ``files/{id}``."""
    lines = []
    for example in body.tuning_task.training_data.examples.examples:
        turns = [
            {"role": "user", "parts": [{"text": example.text_input}]},
            {"role": "model", "parts": [{"text": example.output}]},
        ]
        lines.append(json.dumps({"contents": turns}) + "\n")
    data = "".join(lines).encode()
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    path = FsPath(settings.files_dir) / f".examples-{secrets.token_hex(8)}.part"
    path.write_bytes(data)
    upload = Upload(path, "tunedModel-examples.jsonl", len(data), hashlib.sha256(data).hexdigest())
    upload.fields["model"] = base_model
    try:
        record = check_and_keep(upload, tenant, store, settings, checker)
    finally:
        upload.discard()
    return f"files/{record.id}"


NAMES = {
    "supervisedTuningSpec.hyperParameters": "tuningTask.hyperparameters",
    "supervisedTuningSpec.trainingDatasetUri": "tuningTask.trainingData",
    "tunedModelDisplayName": "displayName",
}


@router.post(
    "/{version}/tunedModels",
    response_model=None,
    summary="Tune a model (Gemini API)",
    responses={200: {"description": "A long-running operation naming tunedModels/{id}"}, **TUNED_ERRORS},
)
async def create_tuned_model(
    version: Version,
    body: CreateTunedModelRequest,
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    settings: SettingsDep,
    scheduler: SchedulerDep,
    checker: CheckerDep,
) -> dict[str, Any]:
    """Gemini's ``tunedModels.create``: the examples become an upload, then a tuning job like any other
    (``tuningJobs/{id}``, the same id)."""
    hyper = body.tuning_task.hyperparameters or TuningHyperparameters.model_validate({})
    if hyper.learning_rate is not None:
        raise invalid([("tuningTask.hyperparameters.learningRate", "not supported: give learningRateMultiplier")])
    base_model = translate.base_model_id(body.base_model)
    base_problems = translate.reference_problems(base_model, settings)
    if base_problems:
        raise invalid([("baseModel", message) for message in base_problems])
    dataset = await run_in_threadpool(_examples_file, body, tenant, store, settings, checker, base_model)
    native_body: dict[str, Any] = {
        "baseModel": base_model,
        "supervisedTuningSpec": {
            "trainingDatasetUri": dataset,
            "hyperParameters": hyper.model_dump(by_alias=True, exclude_none=True, exclude={"learning_rate"}),
        },
    }
    if body.display_name is not None:
        native_body["tunedModelDisplayName"] = body.display_name
    job, _ = await run_in_threadpool(
        translate.create_job, native_body, request, tenant, store, settings, scheduler, None, NAMES
    )
    return {
        "name": f"tunedModels/{job.id}/operations/create",
        "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.CreateTunedModelMetadata",
            "tunedModel": f"tunedModels/{job.id}",
            "totalSteps": (job.stats or {}).get("tuningStepCount"),
        },
        "done": False,
    }


@router.get("/{version}/tunedModels", response_model=None, summary="List tuned models", responses=TUNED_ERRORS)
def read_tuned_models(
    version: Version,
    tenant: Tenant,
    store: StoreDep,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=limits.MAX_PAGE_SIZE)] = limits.DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query(alias="pageToken", pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
) -> dict[str, Any]:
    after = page_start(page_token, tenant, store) if page_token else None
    jobs, more = store.list_jobs(tenant, page_size=page_size, page_token=after)
    token = page_token_for(jobs[-1]) if more and jobs else None
    return {"tunedModels": [tuned_model(job) for job in jobs], "nextPageToken": token}


@router.get(
    "/{version}/tunedModels/{job_id}", response_model=None, summary="Read a tuned model", responses=TUNED_ERRORS
)
def read_tuned_model(version: Version, job_id: ModelId, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return tuned_model(store.get_job(tenant, job_id))


add_routes(router, "tuned")  # tunedModels/{id}:generateContent, :streamGenerateContent, :countTokens
