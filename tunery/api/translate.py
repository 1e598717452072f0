"""What the OpenAI, Vertex AI and Gemini route variants share: one way onto the native handlers.

    job = create_job(native_body, request, tenant, store, settings, scheduler)   # POST /v1/tuningJobs's handler
    model = base_model_id("publishers/google/models/tiny")                       # → "tiny"
    raise chat_error(exc, origin)                                              # 400s named by the chat's fields

A variant translates its body into the native ``CreateTuningJobRequest`` shape and hands it to the native
handler, so every rule (datasets, base model, hyperparameter ranges, idempotency) is checked once, in one
place; ``names`` maps the native field names in its 400 back to the ones the caller sent.

An OpenAI chat request's content parts become Gemini parts in ``tunery.serving.openai``; ``chat_error`` names
the generation path's 400s back by the chat's fields (``messages[i].content[j]``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from tunery.api import tuning_jobs
from tunery.api.errors import ApiError, field_name
from tunery.api.limits import ApiSettings
from tunery.api.paths import resolve_base_model
from tunery.api.schemas import CreateTuningJobRequest
from tunery.errors import ConfigError, DatasetError
from tunery.jobs.store import Job, Store
from tunery.serving.openai import chat_field

MODEL_PREFIXES = re.compile(r"^(projects/[^/]+/locations/[^/]+/)?(publishers/[^/]+/)?(models|tunedModels|endpoints)/")


def base_model_id(name: Any) -> Any:
    """``models/x``, ``publishers/google/models/x`` or ``projects/p/locations/l/endpoints/x`` → ``x``; anything
    else as it is (a path under the data root, or a value the native schema will name as wrong)."""
    return MODEL_PREFIXES.sub("", name, count=1) if isinstance(name, str) else name


def reference_problems(base_model: str, settings: ApiSettings) -> list[str]:
    """Why ``base_model`` names no model this server has (checked before its tokenizer counts an upload)."""
    try:
        resolve_base_model(base_model, settings.data_root, "baseModel")
    except ConfigError as exc:
        return [str(exc).removeprefix("baseModel: ")]
    return []


def create_job(
    body: dict[str, Any],
    request: Request,
    tenant: str,
    store: Store,
    settings: ApiSettings,
    scheduler: Any,
    idempotency_key: str | None = None,
    names: dict[str, str] | None = None,
) -> tuple[Job, bool]:
    """The native create for a translated ``body``: the job, and whether it is new (an idempotent retry is not)."""
    try:
        checked = CreateTuningJobRequest.model_validate(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *_renamed_loc(e["loc"], names))} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None
    try:
        job, created = tuning_jobs.create_job(checked, request, tenant, store, settings, scheduler, idempotency_key)
    except ApiError as exc:
        raise renamed(exc, names) from None
    return store.get_job(tenant, job.id), created


def _renamed_loc(loc: tuple[Any, ...], names: dict[str, str] | None) -> tuple[Any, ...]:
    if not names:
        return loc
    native = field_name(loc)
    for old, new in names.items():
        if native == old or native.startswith(old + "."):
            return (new + native[len(old) :],)
    return loc


def renamed(exc: ApiError, names: dict[str, str] | None) -> ApiError:
    """``exc`` with each native field name in its message and field violations replaced by the caller's."""
    if not names:
        return exc
    message = str(exc.detail)
    for old, new in names.items():
        message = message.replace(old, new)
    details = exc.details
    for detail in details or []:
        for violation in detail.get("fieldViolations", []):
            for old, new in names.items():
                if violation.get("field", "").startswith(old):
                    violation["field"] = new + violation["field"][len(old) :]
                    violation["description"] = violation.get("description", "").replace(old, new)
    return ApiError(exc.status_code, message, details, dict(exc.headers or {}))


# --- a chat request's errors, by its OpenAI fields ---------------------------------------------------------


def chat_error(exc: Exception, origin: dict[int, int]) -> Exception:
    """``exc`` (a 400 of the generation path, or the model host's ``DatasetError``) with each field named as the
    chat request named it; anything else as it is."""
    if isinstance(exc, ApiError) and exc.details:
        names = {}
        for detail in exc.details:
            for violation in detail.get("fieldViolations", []):
                names[violation.get("field", "")] = chat_field(violation.get("field", ""), origin)
        return renamed(exc, {old: new for old, new in names.items() if old != new})
    if isinstance(exc, DatasetError) and exc.problems:
        problems = [dataclasses.replace(p, field=chat_field(p.field, origin)) for p in exc.problems]
        message = exc.args[0] if exc.args else ""
        for old, new in zip(exc.problems, problems, strict=True):
            message = message.replace(old.field, new.field)
        return DatasetError(message, problems)
    return exc
