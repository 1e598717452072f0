"""Every route that generates or counts tokens goes through here: one place that resolves the model,
admits the call (``tunery.api.admission``) and awaits the model host.

    result = await generation.generate(request, tenant, model_id, body)            # GenerateContentResponse
    chunks = await generation.stream(request, tenant, model_id, body)              # admitted (or 429) now
    async for chunk in chunks: ...                                                 # its chunks
    counted = await generation.count_tokens(request, tenant, model_id, body)       # {"totalTokens": n}

``body`` is a Gemini generateContent (or countTokens) body, already checked by ``tunery.serving.gemini``
by the route (the OpenAI and Vertex routes translate their shapes into it first). The handlers are async
and the host is awaited, so a slow or stuck model host never holds a thread the control plane needs.

Each call is admitted first: past a limit it raises ``ResourceExhaustedError`` (429 with ``Retry-After``);
its deadline is the client's ``X-Request-Timeout`` (bounded by the server); a client that disconnects
cancels it and frees its slot. ``stream`` admits when awaited, so that a refusal is an HTTP status rather
than a broken stream; iterating it without ``await`` (``async for chunk in generation.stream(...)``) works
too and admits at the first chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Generator
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tunery.api import admission
from tunery.api.deps import get_host
from tunery.jobs.store import Store
from tunery.models.catalog import CATALOG


def servable(model_id: str, tenant: str, store: Store) -> str:
    """What the model host loads for ``models/{model_id}``: a catalog id, or the tenant's tuned model directory."""
    if model_id in CATALOG:
        return model_id
    return store.get_tuned_model(tenant, model_id).path


async def _servable(request: Request, tenant: str, model_id: str) -> str:
    if model_id in CATALOG:
        return model_id
    return await run_in_threadpool(servable, model_id, tenant, request.app.state.store)


async def generate(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Gemini's ``GenerateContentResponse`` for ``body`` on ``models/{model_id}``."""
    state = request.app.state
    until = admission.deadline(request, state.admission.limits)
    model = await _servable(request, tenant, model_id)
    host = get_host(request)

    async def admitted() -> dict[str, Any]:
        async with state.admission.admitted(host, tenant, admission.estimate_tokens(body), until) as left:
            return await host.agenerate(
                model, body, max_prompt_tokens=state.settings.max_prompt_tokens, model_version=model_id, timeout=left
            )

    return await admission.until_disconnected(request, admitted())


async def count_tokens(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Gemini's ``CountTokensResponse`` for ``body`` on ``models/{model_id}``."""
    state = request.app.state
    until = admission.deadline(request, state.admission.limits)
    model = await _servable(request, tenant, model_id)
    host = get_host(request)

    async def admitted() -> dict[str, Any]:
        async with state.admission.admitted(host, tenant, admission.prompt_tokens(body), until) as left:
            return await host.acount_tokens(model, body, timeout=left)

    return await admission.until_disconnected(request, admitted())


def stream(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> Stream:
    """The same answer as ``GenerateContentResponse`` chunks (see ``ModelHost.astream``), holding its slot until
    the last chunk or until the iteration is closed; ``await`` it to be admitted (or refused) before iterating."""
    return Stream(request, tenant, model_id, body)


class Stream:
    """An admitted (once awaited) stream of a generation's chunks; see ``stream``."""

    def __init__(self, request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> None:
        self.request, self.tenant, self.model_id, self.body = request, tenant, model_id, body
        self._ticket: admission.Ticket | None = None
        self._chunks: AsyncIterator[dict[str, Any]] | None = None
        self._closed = False

    def __await__(self) -> Generator[Any, None, Stream]:
        return self._admitted().__await__()

    async def _admitted(self) -> Stream:
        if self._ticket is None and not self._closed:
            await admission.until_disconnected(self.request, self._open())
        return self

    async def _open(self) -> None:
        state = self.request.app.state
        until = admission.deadline(self.request, state.admission.limits)
        model = await _servable(self.request, self.tenant, self.model_id)
        host = get_host(self.request)
        ticket = await state.admission.enter(host, self.tenant, admission.estimate_tokens(self.body), until)
        self._ticket = ticket
        self._chunks = host.astream(
            model,
            self.body,
            max_prompt_tokens=state.settings.max_prompt_tokens,
            model_version=self.model_id,
            timeout=ticket.deadline - time.monotonic(),
        )

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        await self._admitted()
        if self._chunks is None:
            raise StopAsyncIteration
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop the generation (if it is still running) and free its slot."""
        chunks, self._chunks, self._closed = self._chunks, None, True
        try:
            if chunks is not None and hasattr(chunks, "aclose"):
                await chunks.aclose()
        finally:
            self._leave()

    def _leave(self) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self.request.app.state.admission.leave(ticket)

    def __del__(self) -> None:  # a stream dropped without aclose (its response was cancelled) still frees its slot
        self._leave()
