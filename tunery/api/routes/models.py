"""``/v1/models``: the catalog's base models and the tenant's tuned models; generateContent and countTokens.

Prediction runs in the model host subprocess (``tunery.serving.process.ModelHost``), never here: a request
is checked by ``tunery.serving.gemini`` (torch-free, every problem at once) before the host sees it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from tunery.api.deps import HostDep, SettingsDep, StoreDep, Tenant, public_url
from tunery.api.predict import add_routes
from tunery.api.schemas import (
    MODEL_ERRORS as ERRORS,
)
from tunery.api.schemas import (
    Empty,
    ListModelsResponse,
    Model,
    ModelEvaluation,
    ModelId,
)
from tunery.api.views import base_resource, model_view
from tunery.errors import ConfigError, NotFoundError, TuneryError
from tunery.evaluation.evaluate import EVALUATION_FILE
from tunery.models.catalog import CATALOG

log = logging.getLogger("tunery.api")
router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=None, summary="List models", responses={200: {"model": ListModelsResponse}, **ERRORS})
def read_models(request: Request, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    """The catalog's base models, then the tenant's tuned models (newest first)."""
    api_base = public_url(request)
    tuned = [model.resource(api_base) for model in store.list_tuned_models(tenant)]
    listed = [model_view(resource, tenant) for resource in [base_resource(entry) for entry in CATALOG.values()] + tuned]
    return {"models": listed, "object": "list", "data": listed}  # Gemini's clients read models, OpenAI's data


@router.get("/{model_id}", response_model=None, summary="Read a model", responses={200: {"model": Model}, **ERRORS})
def read_model(model_id: ModelId, request: Request, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    if model_id in CATALOG:
        return model_view(base_resource(CATALOG[model_id]), tenant)
    return model_view(store.get_tuned_model(tenant, model_id).resource(public_url(request)), tenant)


@router.delete(
    "/{model_id}", response_model=None, summary="Delete a tuned model", responses={200: {"model": Empty}, **ERRORS}
)
def delete_model(
    model_id: ModelId, tenant: Tenant, store: StoreDep, settings: SettingsDep, host: HostDep
) -> dict[str, Any]:
    """Forget a tuned model, unload it from the model host and remove its directory. Base models stay."""
    if model_id in CATALOG:
        raise ConfigError(f"models/{model_id} is a base model from the catalog; only tuned models can be deleted")
    record = store.delete_tuned_model(tenant, model_id)
    try:
        host.evict(record.path)
    except TuneryError as exc:  # the record is gone, so nothing can ask for the model again
        log.warning("could not evict %s from the model host: %s", record.path, exc)
    path = Path(record.path)
    if path.resolve().is_relative_to(settings.tuned_models_dir.resolve()):
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
    return {}


@router.get(
    "/{model_id}/evaluation",
    response_model=None,
    summary="Read a tuned model's evaluation",
    responses={200: {"model": ModelEvaluation}, **ERRORS},
)
def read_evaluation(model_id: ModelId, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    """The evaluation that tuning ran on the job's validation set (``tunery.evaluation``): task, metrics, error
    analysis and robustness. 404 when the job had no ``validationDatasetUri``."""
    name = f"models/{model_id}"
    if model_id in CATALOG:
        raise NotFoundError(f"{name} is a base model: evaluations are stored with tuned models")
    path = Path(store.get_tuned_model(tenant, model_id).path) / EVALUATION_FILE
    if not path.is_file():
        raise NotFoundError(f"{name} has no evaluation: its tuning job had no validationDatasetUri")
    stored = json.loads(path.read_text(encoding="utf-8"))
    if "metrics" not in stored:  # the evaluation failed after tuning; the model is fine
        return {"model": name, "error": stored.get("error", "the evaluation did not finish")}
    keep = ("task", "metrics", "errorAnalysis", "robustness", "weights", "reference")  # not the server's paths
    return {"model": name, **{key: stored[key] for key in keep if key in stored}}


add_routes(router, "models")  # {m}:generateContent and {m}:countTokens (tunery.api.predict)
