"""Vertex AI's resource paths, for google-cloud-aiplatform (``vertexai``) and google-genai's ``vertexai=True``.

    POST /v1beta1/projects/{p}/locations/{l}/tuningJobs               create: 200, as Vertex answers
    GET  /v1beta1/projects/{p}/locations/{l}/tuningJobs[/{id}]        read, list
    POST /v1beta1/projects/{p}/locations/{l}/tuningJobs/{id}:cancel
    POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent (:streamGenerateContent,
         :countTokens); the same under /v1/publishers/google/models/{m} (express mode) and, for a tuned
         model, /v1/projects/{p}/locations/{l}/endpoints/{id}
    GET  /v1/publishers/google/models[/{m}]

The version is ``v1`` or ``v1beta1``. Project and location are accepted and name the resources in the answer;
tenancy still comes from the API key. The bodies are the proto JSON the SDKs send: ``adapterSize`` as an enum
name (``ADAPTER_SIZE_SIXTEEN``) or its integer code (``4`` is rank 16), ``epochCount`` as an integer string,
``tuningMode`` inside ``supervisedTuningSpec``; they are translated into the native ``POST /v1/tuningJobs``
body, so a job made here is ``tuningJobs/{id}`` too, and the native handler checks it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from tunery.api import limits, translate
from tunery.api.deps import SchedulerDep, SettingsDep, StoreDep, Tenant, public_url, wake_scheduler
from tunery.api.errors import invalid
from tunery.api.predict import Segment, add_routes
from tunery.api.predict import VertexVersion as Version
from tunery.api.schemas import (
    JOB_ERRORS,
    MODEL_ERRORS,
    DisplayName,
    GeminiRequest,
    JobId,
    LabelKey,
    LabelValue,
    ModelId,
    TuningJob,
    Uri,
)
from tunery.api.views import ADAPTER_SIZE_NAMES, base_resource, page_start, page_token_for, publisher_model, vertex_job
from tunery.models.catalog import CATALOG
from tunery.tuning.spec import ADAPTER_SIZES

router = APIRouter(tags=["vertex"])

PREFIX = "/{version}/projects/{project}/locations/{location}"

ADAPTER_SIZE_CODES = {1: 1, 6: 2, 2: 4, 3: 8, 4: 16, 5: 32}
UNSPECIFIED = ("ADAPTER_SIZE_UNSPECIFIED", "TUNING_MODE_UNSPECIFIED", 0)
# SupervisedTuningSpec.TuningMode
TUNING_MODES = {
    "TUNING_MODE_FULL": "FULL",
    "TUNING_MODE_PEFT_ADAPTER": "PEFT_ADAPTER",
    "FULL": "FULL",
    "PEFT_ADAPTER": "PEFT_ADAPTER",
    1: "FULL",
    2: "PEFT_ADAPTER",
}
assert set(ADAPTER_SIZE_NAMES.values()) <= set(ADAPTER_SIZES)

ProtoInt = int | Annotated[str, StringConstraints(max_length=20)]
ProtoNumber = float | Annotated[str, StringConstraints(max_length=40)]
ProtoEnum = int | Annotated[str, StringConstraints(max_length=64)]


class VertexHyperParameters(GeminiRequest):
    """``SupervisedHyperParameters`` as proto JSON: 64-bit integers may be strings, enums names or codes."""

    epoch_count: ProtoInt | None = None
    learning_rate_multiplier: ProtoNumber | None = None
    adapter_size: ProtoEnum | None = Field(None, description="ADAPTER_SIZE_SIXTEEN, or its code 4: rank 16")
    batch_size: ProtoInt | None = None
    max_length: ProtoInt | None = None
    seed: ProtoInt | None = None


class VertexSupervisedTuningSpec(GeminiRequest):
    training_dataset_uri: Uri
    validation_dataset_uri: Uri | None = None
    hyper_parameters: VertexHyperParameters | None = None
    tuning_mode: ProtoEnum | None = Field(None, description="TUNING_MODE_PEFT_ADAPTER (default) or TUNING_MODE_FULL")
    export_last_checkpoint_only: bool | None = Field(None, description="Accepted; tunery keeps the final model.")


class VertexPreferenceHyperParameters(VertexHyperParameters):
    beta: ProtoNumber | None = None


class VertexPreferenceOptimizationSpec(VertexSupervisedTuningSpec):
    hyper_parameters: VertexPreferenceHyperParameters | None = None


class VertexCreateTuningJobRequest(GeminiRequest):
    """Vertex AI's ``TuningJob`` as the SDKs send it to ``tuningJobs.create``: ``supervisedTuningSpec`` or
    ``preferenceOptimizationSpec`` (DPO)."""

    base_model: Uri | None = None
    supervised_tuning_spec: VertexSupervisedTuningSpec | None = None
    preference_optimization_spec: VertexPreferenceOptimizationSpec | None = None
    tuned_model_display_name: DisplayName | None = None
    description: Annotated[str, StringConstraints(max_length=limits.MAX_DISPLAY_NAME * 8)] | None = None
    labels: dict[LabelKey, LabelValue] | None = Field(None, max_length=limits.MAX_LABELS)
    tuning_mode: ProtoEnum | None = Field(None, description="tunery's top-level form of supervisedTuningSpec's")


def native_body(body: VertexCreateTuningJobRequest) -> dict[str, Any]:
    """The native ``POST /v1/tuningJobs`` body; 400 names every proto form that has no tunery meaning."""
    problems: list[tuple[str, str]] = []
    if (body.supervised_tuning_spec is None) == (body.preference_optimization_spec is None):
        raise invalid([("supervisedTuningSpec", "give supervisedTuningSpec or preferenceOptimizationSpec, one")])
    spec: Any = body.preference_optimization_spec or body.supervised_tuning_spec
    key = "preferenceOptimizationSpec" if body.preference_optimization_spec else "supervisedTuningSpec"
    hp = spec.hyper_parameters or VertexHyperParameters.model_validate({})
    hyper: dict[str, Any] = {}
    field = f"{key}.hyperParameters"
    for name in ("epoch_count", "batch_size", "max_length", "seed"):
        value = getattr(hp, name)
        if isinstance(value, str):
            if not value.strip().isdigit():
                problems.append((f"{field}.{_camel(name)}", f"{value[:40]!r}: expected a whole number"))
                continue
            value = int(value)
        if value is not None:
            hyper[_camel(name)] = value
    for name in ("learning_rate_multiplier", "beta"):
        sent, number = getattr(hp, name, None), None
        if isinstance(sent, str):
            try:
                number = float(sent)
            except ValueError:
                problems.append((f"{field}.{_camel(name)}", f"{sent[:40]!r}: expected a number"))
        else:
            number = sent
        if number is not None:
            hyper[_camel(name)] = number
    size = hp.adapter_size
    if size is not None and size not in UNSPECIFIED:
        rank = ADAPTER_SIZE_CODES.get(size) if isinstance(size, int) else ADAPTER_SIZE_NAMES.get(size)
        if rank is None:
            problems.append(
                (
                    f"{field}.adapterSize",
                    f"{size!r} is not an adapter size: expected one of {', '.join(ADAPTER_SIZE_NAMES)} or its "
                    f"proto code ({', '.join(map(str, ADAPTER_SIZE_CODES))})",
                )
            )
        else:
            hyper["adapterSize"] = rank
    modes = []
    for where, mode in ((f"{key}.tuningMode", spec.tuning_mode), ("tuningMode", body.tuning_mode)):
        if mode is None or mode in UNSPECIFIED:
            continue
        if mode not in TUNING_MODES:
            problems.append((where, f"{mode!r}: expected TUNING_MODE_PEFT_ADAPTER or TUNING_MODE_FULL"))
        else:
            modes.append(TUNING_MODES[mode])
    if len(set(modes)) > 1:
        problems.append(("tuningMode", f"{key}.tuningMode and tuningMode disagree"))
    if problems:
        raise invalid(problems)
    native: dict[str, Any] = {key: {"trainingDatasetUri": spec.training_dataset_uri, "hyperParameters": hyper}}
    if spec.validation_dataset_uri is not None:
        native[key]["validationDatasetUri"] = spec.validation_dataset_uri
    if body.base_model is not None:
        native["baseModel"] = translate.base_model_id(body.base_model)
    if modes:
        native["tuningMode"] = modes[0]
    if body.tuned_model_display_name is not None:
        native["tunedModelDisplayName"] = body.tuned_model_display_name
    if body.labels:
        native["labels"] = body.labels
    return native


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _parent(project: str | None, location: str | None) -> str:
    return f"projects/{project}/locations/{location}" if project and location else ""


# --- tuning jobs ------------------------------------------------------------------------------------------


async def _create(
    body: VertexCreateTuningJobRequest,
    parent: str,
    request: Request,
    tenant: str,
    store: Any,
    settings: Any,
    scheduler: Any,
    idempotency_key: str | None,
) -> dict[str, Any]:
    native = native_body(body)
    job, _ = await run_in_threadpool(
        translate.create_job, native, request, tenant, store, settings, scheduler, idempotency_key
    )
    return vertex_job(job, parent)


JOB_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": TuningJob}, **JOB_ERRORS}


@router.post(
    PREFIX + "/tuningJobs", response_model=None, summary="Create a tuning job (Vertex AI)", responses=JOB_RESPONSES
)
async def create_job(
    version: Version,
    project: Segment,
    location: Segment,
    body: VertexCreateTuningJobRequest,
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    settings: SettingsDep,
    scheduler: SchedulerDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=256)] = None,
) -> dict[str, Any]:
    """Vertex's ``tuningJobs.create``: 200 with the new job, PENDING."""
    return await _create(body, _parent(project, location), request, tenant, store, settings, scheduler, idempotency_key)


@router.post(
    "/v1beta1/tuningJobs",
    response_model=None,
    summary="Create a tuning job (express mode)",
    responses=JOB_RESPONSES,
    include_in_schema=False,  # the same handler as a documented path: fuzzed there
)
async def create_job_express(
    body: VertexCreateTuningJobRequest,
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    settings: SettingsDep,
    scheduler: SchedulerDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=256)] = None,
) -> dict[str, Any]:
    return await _create(body, "", request, tenant, store, settings, scheduler, idempotency_key)


def _list(tenant: str, store: Any, parent: str, page_size: int, page_token: str | None) -> dict[str, Any]:
    after = page_start(page_token, tenant, store) if page_token else None
    jobs, more = store.list_jobs(tenant, page_size=page_size, page_token=after)
    token = page_token_for(jobs[-1]) if more and jobs else None
    return {"tuningJobs": [vertex_job(job, parent) for job in jobs], "nextPageToken": token}


PageSize = Annotated[int, Query(alias="pageSize", ge=1, le=limits.MAX_PAGE_SIZE)]
PageToken = Annotated[str | None, Query(alias="pageToken", pattern=r"^[A-Za-z0-9_-]{0,64}$")]
Filter = Annotated[str | None, Query(max_length=1024, description="Accepted; not applied")]


@router.get(
    PREFIX + "/tuningJobs", response_model=None, summary="List tuning jobs (Vertex AI)", responses=JOB_RESPONSES
)
def read_jobs(
    version: Version,
    project: Segment,
    location: Segment,
    tenant: Tenant,
    store: StoreDep,
    page_size: PageSize = limits.DEFAULT_PAGE_SIZE,
    page_token: PageToken = None,
    filter: Filter = None,
) -> dict[str, Any]:
    return _list(tenant, store, _parent(project, location), page_size, page_token or None)


@router.get(
    "/v1beta1/tuningJobs/{job_id}",
    response_model=None,
    summary="Read a tuning job (express mode)",
    include_in_schema=False,  # the same handler as a documented path: fuzzed there
    responses=JOB_RESPONSES,
)
def read_job_express(job_id: JobId, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return vertex_job(store.get_job(tenant, job_id), "")


@router.get(
    PREFIX + "/tuningJobs/{job_id}",
    response_model=None,
    summary="Read a tuning job (Vertex AI)",
    responses=JOB_RESPONSES,
)
def read_job(
    version: Version, project: Segment, location: Segment, job_id: JobId, tenant: Tenant, store: StoreDep
) -> dict[str, Any]:
    return vertex_job(store.get_job(tenant, job_id), _parent(project, location))


@router.post(
    PREFIX + "/tuningJobs/{job_id}:cancel",
    response_model=None,
    summary="Cancel a tuning job (Vertex AI)",
    responses=JOB_RESPONSES,
)
def cancel_job(
    version: Version,
    project: Segment,
    location: Segment,
    job_id: JobId,
    tenant: Tenant,
    store: StoreDep,
    scheduler: SchedulerDep,
) -> dict[str, Any]:
    """Vertex's ``tuningJobs.cancel`` answers an empty body; read the job to follow it."""
    store.request_cancel(tenant, job_id)
    wake_scheduler(scheduler)
    return {}


add_routes(router, "vertex")  # publisher models', endpoints' and express mode's predictions (tunery.api.predict)


@router.get(
    "/{version}/publishers/google/models",
    response_model=None,
    summary="List models (Vertex AI)",
    responses=MODEL_ERRORS,
)
def read_models(version: Version, request: Request, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    """The catalog's base models, then the tenant's tuned models, named as publisher models."""
    tuned = [model.resource(public_url(request)) for model in store.list_tuned_models(tenant)]
    models = [base_resource(entry) for entry in CATALOG.values()] + tuned
    return {"models": [publisher_model(m) for m in models], "publisherModels": [publisher_model(m) for m in models]}


@router.get(
    "/{version}/publishers/google/models/{model_id}",
    response_model=None,
    summary="Read a model (Vertex AI)",
    responses=MODEL_ERRORS,
)
def read_model(
    version: Version, model_id: ModelId, request: Request, tenant: Tenant, store: StoreDep
) -> dict[str, Any]:
    if model_id in CATALOG:
        return publisher_model(base_resource(CATALOG[model_id]))
    return publisher_model(store.get_tuned_model(tenant, model_id).resource(public_url(request)))
