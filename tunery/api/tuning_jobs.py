"""Creating a tuning job, the one handler behind ``POST /v1/tuningJobs`` and every shape translated onto it
(OpenAI's fine-tuning jobs, Vertex AI's and the Gemini API's, through ``tunery.api.translate``).

    job, created = create_job(body, request, tenant, store, settings, scheduler, idempotency_key)

The datasets and the base model are resolved (uploads, paths under the data root, the tenant's tuned models),
the hyperparameters checked by ``TuningSpec``: one 400 names every problem. A new job is stored PENDING, its
uploads pinned beside it, and the scheduler woken; an ``Idempotency-Key`` retry gives the earlier job back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request

from tunery.api import admission
from tunery.api.deps import wake_scheduler
from tunery.api.errors import invalid
from tunery.api.kept_files import referenced_media
from tunery.api.limits import ApiSettings
from tunery.api.paths import resolve_base_model, resolve_dataset
from tunery.api.schemas import ComputeConfig, CreateTuningJobRequest, dump
from tunery.errors import ConfigError, NotFoundError
from tunery.jobs import inputs
from tunery.jobs.store import Job, Store, StoredFile, new_id
from tunery.models.catalog import CATALOG, PEFT_ADAPTER
from tunery.tuning.lineage import TUNED_NAME
from tunery.tuning.spec import COMPUTE_CONFIG, HYPER_PARAMETERS, PEFT_ADAPTER_ONLY, REST_NAMES, TuningSpec

REFERENCE_FIELDS = {
    "train": "{spec}.trainingDatasetUri",
    "validation": "{spec}.validationDatasetUri",
    "base_model": "baseModel",
}
SPEC_KEYS = ("supervisedTuningSpec", "preferenceOptimizationSpec")


def _resolve(
    train: str | None,
    validation: str | None,
    base_model: str | None,
    tenant: str,
    store: Store,
    settings: ApiSettings,
    spec_name: str = "supervisedTuningSpec",
) -> tuple[dict[str, str], dict[str, StoredFile], list[tuple[str, str]]]:
    """The paths of the datasets and the base model a create names, the uploads among them, and a
    ``(field, message)`` for each one that names nothing this tenant may use."""
    paths: dict[str, str] = {}
    uploads: dict[str, StoredFile] = {}
    problems: list[tuple[str, str]] = []
    for key, ref in (("train", train), ("validation", validation), ("base_model", base_model)):
        if ref is None:
            continue
        field = REFERENCE_FIELDS[key].format(spec=spec_name)
        try:
            if key == "base_model":
                paths[key] = tuned_base(ref, tenant, store) or resolve_base_model(ref, settings.data_root, field)
            else:
                paths[key], record = resolve_dataset(ref, tenant, store, settings.data_root, field)
                if record is not None:
                    uploads[key] = record
        except ConfigError as exc:
            problems.append((field, str(exc).removeprefix(f"{field}: ")))
    return paths, uploads, problems


def tuned_base(ref: str, tenant: str, store: Store) -> str | None:
    """The directory of the tenant's tuned model ``ref`` names (``{id}``, ``models/{id}``, OpenAI's ``ft:...:{id}``,
    Vertex's ``projects/*/locations/*/models/{id}``), to tune further; None if it names none."""
    found = TUNED_NAME.match(ref)
    if found is None or ref in CATALOG:
        return None
    try:
        record = store.get_tuned_model(tenant, found["id"])
    except NotFoundError:
        return None
    from tunery.jobs.artifacts import local_copy  # TUNERY_ARTIFACTS a URL: a model tuned on another node

    return local_copy(record.path, record.id)


def reference_problems(request: Request, body: Any) -> list[tuple[str, str]]:
    """The datasets and base model of a create that failed its schema, resolved as a valid one's would be, so
    that one answer lists every problem."""
    body = body if isinstance(body, dict) else {}
    name = next((key for key in SPEC_KEYS if isinstance(body.get(key), dict)), SPEC_KEYS[0])
    tuning = body.get(name)
    tuning = tuning if isinstance(tuning, dict) else {}
    train, validation = _text(tuning.get("trainingDatasetUri")), _text(tuning.get("validationDatasetUri"))
    state = request.app.state
    _, _, problems = _resolve(
        train, validation, _text(body.get("baseModel")), request.state.tenant, state.store, state.settings, name
    )
    return problems


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def create_job(
    body: CreateTuningJobRequest,
    request: Request,
    tenant: str,
    store: Store,
    settings: ApiSettings,
    scheduler: Any,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """The job ``body`` describes, and whether it is new (an ``Idempotency-Key`` retry gives the earlier one)."""
    job_id = new_id()
    spec, uploads = _spec(body, tenant, store, settings, job_id)
    admission.admit_job(request, tenant, idempotency_key)  # 429 past the tenant's limit on waiting/running jobs
    for name, path in inputs.pin(job_id, {name: Path(record.path) for name, record in uploads.items()}).items():
        setattr(spec, name, str(path))  # the job's own link: deleting the upload cannot break it
    media = referenced_media([spec.train, spec.validation], tenant, store)  # files/{id} in its lines
    if media:
        spec.uploaded_media = str(inputs.pin_media(job_id, media))
    try:
        job, created = store.create_job(
            tenant, spec, dump(body), job_id=job_id, idempotency_key=idempotency_key, owner=None
        )
    except BaseException:
        inputs.release(job_id)
        raise
    if created:
        wake_scheduler(scheduler)
    else:
        inputs.release(job_id)
    return job, created


def _spec(
    body: CreateTuningJobRequest, tenant: str, store: Store, settings: ApiSettings, job_id: str
) -> tuple[TuningSpec, dict[str, StoredFile]]:
    """The ``TuningSpec`` the request describes, and the uploads it names; one 400 names every problem."""
    tuning, hp, name = body.tuning, body.tuning.hyper_parameters, body.spec_name
    paths, uploads, problems = _resolve(
        tuning.training_dataset_uri, tuning.validation_dataset_uri, body.base_model, tenant, store, settings, name
    )
    values: dict[str, Any] = {
        "objective": "DPO" if body.preference_optimization_spec else "SFT",
        "train": paths.get("train", "unresolved"),
        "validation": paths.get("validation"),
        "base_model": paths.get("base_model"),
        "method": body.tuning_mode,
        "auto_validation": tuning.auto_validation,
        "display_name": body.tuned_model_display_name,
        **{HYPER_PARAMETERS[name]: value for name, value in hp.model_dump(by_alias=True).items()},
        **{
            COMPUTE_CONFIG[rest]: v
            for rest, v in (tuning.compute_config or ComputeConfig()).model_dump(by_alias=True).items()
        },
    }
    if (body.tuning_mode or PEFT_ADAPTER) != PEFT_ADAPTER:
        given = {HYPER_PARAMETERS[rest]: v for rest, v in hp.model_dump(by_alias=True, exclude_unset=True).items()}
        problems += [
            (
                f"{name}.hyperParameters.{REST_NAMES[field]}",
                f"applies to PEFT_ADAPTER only, not {body.tuning_mode}",
            )
            for field in PEFT_ADAPTER_ONLY
            if given.get(field) is not None
        ]
    try:
        spec = TuningSpec(
            **{k: v for k, v in values.items() if v is not None},
            output=str(settings.tuned_models_dir / job_id),
            labels=dict(body.labels),
        )
    except ConfigError as exc:
        problems.append((name, str(exc)))
    if problems:
        raise invalid(problems)
    return spec, uploads
