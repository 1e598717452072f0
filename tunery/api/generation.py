"""Every route that generates or counts tokens goes through here: one place that resolves the model,
admits the call and awaits the model host.

    result = await generation.generate(request, tenant, model_id, body)            # GenerateContentResponse
    async for chunk in generation.stream(request, tenant, model_id, body): ...   # its chunks
    counted = await generation.count_tokens(request, tenant, model_id, body)       # {"totalTokens": n}

``body`` is a Gemini generateContent (or countTokens) body, already checked by ``tunery.serving.gemini``
by the route (the OpenAI and Vertex routes translate their shapes into it first). The handlers are async
and the host is awaited, so a slow or stuck model host never holds a thread the control plane needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from tunery.api.deps import get_host
from tunery.jobs.store import Store
from tunery.models.catalog import CATALOG


def servable(model_id: str, tenant: str, store: Store) -> str:
    """What the model host loads for ``models/{model_id}``: a catalog id, or the tenant's tuned model directory."""
    if model_id in CATALOG:
        return model_id
    return store.get_tuned_model(tenant, model_id).path


async def generate(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Gemini's ``GenerateContentResponse`` for ``body`` on ``models/{model_id}``."""
    state = request.app.state
    model = servable(model_id, tenant, state.store)
    return await get_host(request).agenerate(
        model, body, max_prompt_tokens=state.settings.max_prompt_tokens, model_version=model_id
    )


async def stream(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The same answer as ``GenerateContentResponse`` chunks (see ``ModelHost.astream``)."""
    state = request.app.state
    model = servable(model_id, tenant, state.store)
    async for chunk in get_host(request).astream(
        model, body, max_prompt_tokens=state.settings.max_prompt_tokens, model_version=model_id
    ):
        yield chunk


async def count_tokens(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Gemini's ``CountTokensResponse`` for ``body`` on ``models/{model_id}``."""
    model = servable(model_id, tenant, request.app.state.store)
    return await get_host(request).acount_tokens(model, body)
