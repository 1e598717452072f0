"""Gemini API paths beyond ``/v1/models/{m}:generateContent``: the stream, other API versions, and ``tunedModels``.

    POST /v1/models/{m}:streamGenerateContent?alt=sse      each event a whole GenerateContentResponse
    POST /v1/models/{m}:streamGenerateContent              the same chunks as one JSON array
    POST /v1beta/models/{m}:generateContent (and :countTokens, :streamGenerateContent)
    POST /v1/tunedModels   GET /v1/tunedModels[/{id}]   POST /v1/tunedModels/{id}:generateContent

``tunedModels/{id}`` is the Gemini API's name for a tuning job and the model it makes; here it is a view of
``tuningJobs/{id}`` (the same id, the same job), and its training examples become an upload checked exactly
as ``POST /v1/files`` checks one. Every prediction goes through ``tunery.api.generation``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from tunery.api import generation, limits, translate
from tunery.api.deps import CheckerDep, SchedulerDep, SettingsDep, StoreDep, Tenant
from tunery.api.errors import error_body, invalid, status_for
from tunery.api.routes import files as files_route
from tunery.api.routes import jobs as jobs_route
from tunery.api.routes.models import SERVING_ERRORS
from tunery.api.schemas import (
    CountTokensRequest,
    CountTokensResponse,
    DisplayName,
    ErrorResponse,
    GeminiRequest,
    GenerateContentRequest,
    GenerateContentResponse,
    ModelId,
    Text,
    Uri,
)
from tunery.api.uploads import Upload
from tunery.errors import ConfigError, TuneryError
from tunery.jobs.store import FAILED, SUCCEEDED, Job
from tunery.serving import gemini

router = APIRouter(tags=["gemini"])

Version = Annotated[str, Path(pattern=r"^v1(beta1?)?$", description="API version: v1, v1beta or v1beta1")]
BetaVersion = Annotated[str, Path(pattern=r"^v1beta1?$", description="v1beta or v1beta1 (v1 is the native path)")]
Alt = Annotated[Literal["sse", "json"], Query(description="sse: Server-Sent Events; json: one JSON array")]
STREAM_RESPONSES = {
    200: {
        "model": GenerateContentResponse,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "GenerateContentResponse chunks (alt=sse) or a JSON array of them",
    },
    **SERVING_ERRORS,
}
GENERATE_RESPONSES = {200: {"model": GenerateContentResponse}, **SERVING_ERRORS}
COUNT_RESPONSES = {200: {"model": CountTokensResponse}, **SERVING_ERRORS}
MAX_EXAMPLES = 100_000


# --- one implementation of the three prediction methods, for every path that names a model -------------


def body_of(body: GenerateContentRequest | CountTokensRequest) -> dict[str, Any]:
    """A checked request as the camelCase JSON the model host takes."""
    return body.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


async def generate(request: Request, tenant: str, model_id: str, body: GenerateContentRequest) -> dict[str, Any]:
    raw = body_of(body)
    gemini.parse_generate_request(raw)
    return await generation.generate(request, tenant, model_id, raw)


async def count_tokens(request: Request, tenant: str, model_id: str, body: CountTokensRequest) -> dict[str, Any]:
    raw = body_of(body)
    gemini.parse_count_tokens_request(raw)
    return await generation.count_tokens(request, tenant, model_id, raw)


async def stream(
    request: Request, tenant: str, model_id: str, body: GenerateContentRequest, alt: str
) -> StreamingResponse:
    """The answer as it is made: Server-Sent Events (``alt=sse``, what google-genai asks for) or a JSON array
    written element by element (what Vertex AI's REST clients read). A problem found before the first chunk
    is an ordinary error response; one after it ends the stream with an ``{"error": ...}`` element."""
    raw = body_of(body)
    gemini.parse_generate_request(raw)
    chunks = generation.stream(request, tenant, model_id, raw)
    first = await anext(chunks)  # the model, the prompt and the host are checked before the 200 goes out
    if alt == "sse":
        return StreamingResponse(
            _sse(first, chunks),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return StreamingResponse(_array(first, chunks), media_type="application/json")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _rest(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The chunks after the first, then an ``error`` element if the host fails mid-stream."""
    try:
        async for chunk in chunks:
            yield chunk
    except TuneryError as exc:
        yield error_body(status_for(exc), str(exc))
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _sse(first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    yield f"data: {_dumps(first)}\r\n\r\n"
    async for chunk in _rest(chunks):
        yield f"data: {_dumps(chunk)}\r\n\r\n"


async def _array(first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    yield "[" + _dumps(first)
    async for chunk in _rest(chunks):
        yield ",\r\n" + _dumps(chunk)
    yield "]"


# --- /v1/models/{m}:streamGenerateContent and the v1beta paths ------------------------------------------


@router.post(
    "/v1/models/{model_id}:streamGenerateContent",
    response_model=None,
    summary="Stream a response",
    responses=STREAM_RESPONSES,
    tags=["models"],
)
async def stream_generate_content(
    model_id: ModelId, body: GenerateContentRequest, request: Request, tenant: Tenant, alt: Alt = "json"
) -> StreamingResponse:
    """generateContent, answered chunk by chunk as the model writes."""
    return await stream(request, tenant, model_id, body, alt)


@router.post(
    "/{version}/models/{model_id}:generateContent",
    response_model=None,
    summary="Generate a response (v1beta, v1beta1)",
    include_in_schema=False,  # the same handler as a documented path: fuzzed there
    responses=GENERATE_RESPONSES,
)
async def generate_content_beta(
    version: BetaVersion, model_id: ModelId, body: GenerateContentRequest, request: Request, tenant: Tenant
) -> dict[str, Any]:
    return await generate(request, tenant, model_id, body)


@router.post(
    "/{version}/models/{model_id}:streamGenerateContent",
    response_model=None,
    summary="Stream a response (v1beta, v1beta1)",
    include_in_schema=False,  # the same handler as a documented path: fuzzed there
    responses=STREAM_RESPONSES,
)
async def stream_generate_content_beta(
    version: BetaVersion,
    model_id: ModelId,
    body: GenerateContentRequest,
    request: Request,
    tenant: Tenant,
    alt: Alt = "json",
) -> StreamingResponse:
    return await stream(request, tenant, model_id, body, alt)


@router.post(
    "/{version}/models/{model_id}:countTokens",
    response_model=None,
    summary="Count a prompt's tokens (v1beta, v1beta1)",
    include_in_schema=False,  # the same handler as a documented path: fuzzed there
    responses=COUNT_RESPONSES,
)
async def count_tokens_beta(
    version: BetaVersion, model_id: ModelId, body: CountTokensRequest, request: Request, tenant: Tenant
) -> dict[str, Any]:
    return await count_tokens(request, tenant, model_id, body)


# --- tunedModels: the Gemini API's view of a tuning job ---------------------------------------------------

TUNED_STATES = {SUCCEEDED: "ACTIVE", FAILED: "FAILED", "JOB_STATE_CANCELLED": "FAILED"}
TUNED_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request: every field at fault is named"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "No such tuned model for this tenant"},
}


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
        record = files_route._check_and_keep(upload, tenant, store, settings, checker)
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
    after = jobs_route.page_start(page_token, tenant, store) if page_token else None
    jobs, more = store.list_jobs(tenant, page_size=page_size, page_token=after)
    token = jobs_route.page_token_for(jobs[-1]) if more and jobs else None
    return {"tunedModels": [tuned_model(job) for job in jobs], "nextPageToken": token}


@router.get(
    "/{version}/tunedModels/{job_id}", response_model=None, summary="Read a tuned model", responses=TUNED_ERRORS
)
def read_tuned_model(version: Version, job_id: ModelId, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return tuned_model(store.get_job(tenant, job_id))


def tuned_model_id(store: Any, tenant: str, job_id: str) -> str:
    """The model a ``tunedModels/{id}`` answers with; 400 until its job has succeeded."""
    job = store.get_job(tenant, job_id)
    if job.tuned_model_id is None:
        state = TUNED_STATES.get(job.state, "CREATING")
        raise ConfigError(f"tunedModels/{job_id} is {state}: it answers once its tuning job has succeeded")
    return job.tuned_model_id


@router.post(
    "/{version}/tunedModels/{job_id}:generateContent",
    response_model=None,
    summary="Generate with a tuned model",
    responses=GENERATE_RESPONSES,
)
async def generate_tuned(
    version: Version, job_id: ModelId, body: GenerateContentRequest, request: Request, tenant: Tenant, store: StoreDep
) -> dict[str, Any]:
    model_id = await run_in_threadpool(tuned_model_id, store, tenant, job_id)
    return await generate(request, tenant, model_id, body)


@router.post(
    "/{version}/tunedModels/{job_id}:streamGenerateContent",
    response_model=None,
    summary="Stream from a tuned model",
    include_in_schema=False,  # the same handler as a documented path: fuzzed there
    responses=STREAM_RESPONSES,
)
async def stream_tuned(
    version: Version,
    job_id: ModelId,
    body: GenerateContentRequest,
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    alt: Alt = "json",
) -> StreamingResponse:
    model_id = await run_in_threadpool(tuned_model_id, store, tenant, job_id)
    return await stream(request, tenant, model_id, body, alt)


@router.post(
    "/{version}/tunedModels/{job_id}:countTokens",
    response_model=None,
    summary="Count tokens for a tuned model",
    include_in_schema=False,  # the same handler as a documented path: fuzzed there
    responses=COUNT_RESPONSES,
)
async def count_tokens_tuned(
    version: Version, job_id: ModelId, body: CountTokensRequest, request: Request, tenant: Tenant, store: StoreDep
) -> dict[str, Any]:
    model_id = await run_in_threadpool(tuned_model_id, store, tenant, job_id)
    return await count_tokens(request, tenant, model_id, body)
