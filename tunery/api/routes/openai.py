"""OpenAI's shapes, for the ``openai`` client with ``base_url=URL + "/v1"``: thin translations onto the same handlers.

    POST /v1/chat/completions (stream: chat.completion.chunk events, then data: [DONE])   POST /v1/completions
    POST /v1/fine_tuning/jobs   GET /v1/fine_tuning/jobs[/{id}[/events|/checkpoints]]   POST .../{id}/cancel
    GET /v1/files/{id}/content (an upload, or a batch's output or error file: tunery.jobs.batch_files)

The bodies, their checks and their translation are the wire format's (``tunery.serving.openai``): a chat request
becomes a Gemini generateContent body and goes through ``tunery.api.generation``; a fine-tuning job becomes a
native ``POST /v1/tuningJobs`` body, so it is the same job as ``tuningJobs/{id}`` (same id). The resources are
answered in OpenAI's views (``tunery.api.views``). A problem of the request is a 400 naming each field at fault.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunery.api import generation, limits, translate
from tunery.api.deps import SchedulerDep, SettingsDep, StoreDep, Tenant, wake_scheduler
from tunery.api.errors import ApiError, error_body, invalid, status_for
from tunery.api.schemas import SERVING_ERRORS, ErrorResponse, FileId
from tunery.api.views import checkpoint, openai_event, openai_job, output_file, unix
from tunery.errors import DatasetError, NotFoundError, TuneryError
from tunery.jobs.batch_files import read_results
from tunery.models.tuned import kept_checkpoints
from tunery.serving.openai import (
    JOB_NAMES,
    ChatCompletionRequest,
    CompletionRequest,
    FineTuningJobRequest,
    candidate,
    chat_body,
    check,
    completion_body,
    fine_tuning_body,
    response_body,
    usage,
)

router = APIRouter(tags=["openai"])

JobId = Annotated[str, Path(pattern=r"^[^\x00-\x1f\x7f]{1,128}$", description="The job id (tuningJobs/{id})")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request: every field at fault is named"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "No such job or model for this tenant"},
}
STREAM_RESPONSES = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "JSON, or SSE with stream"},
    **SERVING_ERRORS,
}

T = TypeVar("T")


def _translated(translate_body: Callable[..., T], *args: Any) -> T:
    """The wire format's translation or check, its problems a 400 naming each field at fault."""
    try:
        return translate_body(*args)
    except DatasetError as exc:
        raise invalid((p.field, p.message) for p in exc.problems) from None


@router.post(
    "/v1/chat/completions",
    response_model=None,
    summary="Chat completion (OpenAI)",
    responses=STREAM_RESPONSES,
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, tenant: Tenant) -> Any:
    """OpenAI's chat completion on a base model or a tuned model (its ``fine_tuned_model``)."""
    raw, origin = _translated(chat_body, body)
    _translated(check, raw, origin)
    ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    if body.stream:
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = generation.stream(request, tenant, body.model, raw)
        try:
            first = await anext(chunks)
        except (ApiError, DatasetError) as exc:  # media named by the request, refused: by its OpenAI field
            raise translate.chat_error(exc, origin) from None
        return _sse(_chat_chunks(first, chunks, ident, created, body.model, with_usage))
    try:
        result = await generation.generate(request, tenant, body.model, raw)
    except (ApiError, DatasetError) as exc:
        raise translate.chat_error(exc, origin) from None
    return {**response_body(result, body.model, True, ident, created), "system_fingerprint": None}


@router.post("/v1/completions", response_model=None, summary="Text completion (OpenAI)", responses=STREAM_RESPONSES)
async def create_completion(body: CompletionRequest, request: Request, tenant: Tenant) -> Any:
    raw = _translated(completion_body, body)
    _translated(check, raw)
    ident, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    if body.stream:
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = generation.stream(request, tenant, body.model, raw)
        first = await anext(chunks)
        return _sse(_completion_chunks(first, chunks, ident, created, body.model, with_usage))
    result = await generation.generate(request, tenant, body.model, raw)
    return response_body(result, body.model, False, ident, created)


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _all(first: dict[str, Any], chunks: Any) -> AsyncIterator[dict[str, Any]]:
    yield first
    try:
        async for chunk in chunks:
            yield chunk
    except TuneryError as exc:  # after the 200: the client reads an error event
        yield error_body(status_for(exc), str(exc))
    finally:
        await chunks.aclose()


async def _chat_chunks(
    first: dict[str, Any], chunks: Any, ident: str, created: int, model: str, with_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
    extra = {"usage": None} if with_usage else {}
    yield {
        **head,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        **extra,
    }
    last: dict[str, Any] = {}
    async for chunk in _all(first, chunks):
        if "error" in chunk:
            yield chunk
            return
        text, reason = candidate(chunk)
        last = chunk
        if text:
            yield {**head, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}], **extra}
        if reason:
            yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}], **extra}
    if with_usage:
        yield {**head, "choices": [], "usage": usage(last)}


async def _completion_chunks(
    first: dict[str, Any], chunks: Any, ident: str, created: int, model: str, with_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    head = {"id": ident, "object": "text_completion", "created": created, "model": model}
    last: dict[str, Any] = {}
    async for chunk in _all(first, chunks):
        if "error" in chunk:
            yield chunk
            return
        text, reason = candidate(chunk)
        last = chunk
        yield {**head, "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}]}
    if with_usage:
        yield {**head, "choices": [], "usage": usage(last)}


# --- files ------------------------------------------------------------------------------------------------


@router.get(
    "/v1/files/{file_id}/content",
    response_model=None,
    summary="A file's content (OpenAI): an upload, or a batch's output or error file (JSONL)",
    responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}, **ERRORS},
)
async def read_file_content(file_id: FileId, tenant: Tenant, store: StoreDep) -> Response:
    """``output_file_id`` and ``error_file_id`` of a batch (its result lines so far), or an uploaded file's bytes."""
    found = output_file(file_id)
    if found is not None:
        data = await run_in_threadpool(read_results, store, tenant, *found)
        return Response(data, media_type="application/jsonl")
    record = await run_in_threadpool(store.get_file, tenant, file_id)
    if not os.path.isfile(record.path):
        raise NotFoundError(f"files/{file_id}: its content is gone")
    mime = record.stats.get("mimeType", "application/jsonl")  # a media upload keeps its type
    return FileResponse(record.path, media_type=mime, filename=record.display_name)


# --- fine-tuning jobs -------------------------------------------------------------------------------------


def _list(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": has_more}


@router.post("/v1/fine_tuning/jobs", response_model=None, summary="Create a fine-tuning job (OpenAI)", responses=ERRORS)
async def create_fine_tuning_job(
    body: FineTuningJobRequest,
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    settings: SettingsDep,
    scheduler: SchedulerDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=256)] = None,
) -> dict[str, Any]:
    """The same job as ``POST /v1/tuningJobs`` makes (``GET /v1/tuningJobs/{id}`` reads it too)."""
    native = _translated(fine_tuning_body, body)
    job, _ = await run_in_threadpool(
        translate.create_job, native, request, tenant, store, settings, scheduler, idempotency_key, JOB_NAMES
    )
    return openai_job(job)


@router.get("/v1/fine_tuning/jobs", response_model=None, summary="List fine-tuning jobs (OpenAI)", responses=ERRORS)
def read_fine_tuning_jobs(
    tenant: Tenant,
    store: StoreDep,
    after: Annotated[str | None, Query(max_length=128, description="A job id: the jobs older than it")] = None,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_PAGE_SIZE)] = 20,
    metadata: Annotated[str | None, Query(max_length=1024, description="Accepted; not applied")] = None,
) -> dict[str, Any]:
    token = str(store.get_job(tenant, after).seq) if after else None
    jobs, next_token = store.list_jobs(tenant, page_size=limit, page_token=token)
    return _list([openai_job(job) for job in jobs], next_token is not None)


@router.get("/v1/fine_tuning/jobs/{job_id}", response_model=None, summary="Read a fine-tuning job", responses=ERRORS)
def read_fine_tuning_job(job_id: JobId, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return openai_job(store.get_job(tenant, job_id))


@router.post(
    "/v1/fine_tuning/jobs/{job_id}/cancel", response_model=None, summary="Cancel a fine-tuning job", responses=ERRORS
)
def cancel_fine_tuning_job(job_id: JobId, tenant: Tenant, store: StoreDep, scheduler: SchedulerDep) -> dict[str, Any]:
    job = store.request_cancel(tenant, job_id)
    wake_scheduler(scheduler)
    return openai_job(job)


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/events",
    response_model=None,
    summary="List a job's events (OpenAI)",
    responses=ERRORS,
)
def read_fine_tuning_events(
    job_id: JobId,
    tenant: Tenant,
    store: StoreDep,
    after: Annotated[str | None, Query(pattern=r"^ftevent-[0-9]{1,18}$", description="Events older than this")] = None,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_EVENTS_PAGE)] = 20,
) -> dict[str, Any]:
    """Newest first, as OpenAI lists them."""
    events = store.events(tenant, job_id, 0, limits.MAX_EVENTS_PAGE)
    newest = list(reversed(events))
    if after:
        cursor = int(after.removeprefix("ftevent-"))
        newest = [e for e in newest if e["id"] < cursor]
    return _list([openai_event(e) for e in newest[:limit]], len(newest) > limit)


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/checkpoints",
    response_model=None,
    summary="List a job's checkpoints (OpenAI)",
    responses=ERRORS,
)
def read_fine_tuning_checkpoints(
    job_id: JobId,
    tenant: Tenant,
    store: StoreDep,
    after: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_PAGE_SIZE)] = 10,
) -> dict[str, Any]:
    """The checkpoints of a succeeded job, newest first: one per kept epoch, each a model of its own named
    ``{fine_tuned_model}:ckpt-step-N`` (the tuned model is the best of them on the validation set); a model tuned
    before checkpoints were kept lists itself with the last step's metrics."""
    job = store.get_job(tenant, job_id)
    if job.tuned_model_id is None:
        return _list([], False)
    created = unix(job.end_time) or unix(job.update_time)
    kept = kept_checkpoints(store.get_tuned_model(tenant, job.tuned_model_id).path)
    if not kept:
        if after:
            return _list([], False)
        metrics = [e["data"] for e in store.events(tenant, job_id, 0, limits.MAX_EVENTS_PAGE) if e["type"] == "metrics"]
        last = metrics[-1] if metrics else {}
        return _list([checkpoint(job, created, job.tuned_model_id, f"ftckpt-{job.id}", last)], False)
    listed = [
        checkpoint(job, created, f"{job.tuned_model_id}:{c['name']}", f"ftckpt-{job.id}-{c['step']}", c)
        for c in reversed(kept)
    ]
    ids = [c["id"] for c in listed]
    start = ids.index(after) + 1 if after in ids else 0 if after is None else len(ids)
    page = listed[start : start + limit]
    return _list(page, start + limit < len(listed))
