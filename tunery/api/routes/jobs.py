"""``/v1/tuningJobs``: create, read, list and cancel tuning jobs, and read (or stream) their events.

A new job is stored PENDING and the scheduler is woken; worker processes do the tuning, never this
process. ``Idempotency-Key`` makes a retried create safe: the first request answers 201 with the new job,
a retry with the same key and the same body answers 200 with that same job, the same key with another
body is 409.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunery.api import limits, tuning_jobs
from tunery.api.deps import SchedulerDep, SettingsDep, StoreDep, Tenant, wake_scheduler
from tunery.api.errors import also_check, invalid
from tunery.api.paths import hide_server_paths
from tunery.api.schemas import (
    JOB_ERRORS as ERRORS,
)
from tunery.api.schemas import (
    LABEL_KEY,
    CreateTuningJobRequest,
    ErrorResponse,
    JobId,
    ListEventsResponse,
    ListTuningJobsResponse,
    State,
    TuningJob,
)
from tunery.api.views import job_view, page_start, page_token_for
from tunery.errors import TuneryError
from tunery.jobs.store import Store

router = APIRouter(prefix="/v1/tuningJobs", tags=["tuningJobs"])

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
SSE_BATCH = 100
SSE_RESPONSE = {"text/event-stream": {"schema": {"type": "string"}}}


@router.post(
    "",
    status_code=201,
    response_model=None,
    summary="Create a tuning job",
    responses={
        201: {"model": TuningJob, "description": "A new job, PENDING"},
        200: {"model": TuningJob, "description": "The job an earlier request with this Idempotency-Key created"},
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with a different request"},
        **ERRORS,
    },
)
@also_check(tuning_jobs.reference_problems)
def create_job(
    body: CreateTuningJobRequest,
    request: Request,
    response: Response,
    tenant: Tenant,
    store: StoreDep,
    settings: SettingsDep,
    scheduler: SchedulerDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=256)] = None,
) -> dict[str, Any]:
    """Check the request (datasets, base model, hyperparameters: every problem at once), store the job
    PENDING and wake the scheduler."""
    job, created = tuning_jobs.create_job(body, request, tenant, store, settings, scheduler, idempotency_key)
    if not created:
        response.status_code = 200
    return job_view(job, request)


@router.get(
    "", response_model=None, summary="List tuning jobs", responses={200: {"model": ListTuningJobsResponse}, **ERRORS}
)
def read_jobs(
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    state: State | None = None,
    label: Annotated[list[str] | None, Query(description="key:value (or key=value); repeat to require several")] = None,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=limits.MAX_PAGE_SIZE)] = limits.DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query(alias="pageToken", pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
) -> dict[str, Any]:
    """The tenant's jobs, newest first, ``pageSize`` at a time; ``nextPageToken`` reads the next page."""
    after = page_start(page_token, tenant, store) if page_token else None
    jobs, more = store.list_jobs(
        tenant, state=state, labels=_labels(label or []), page_size=page_size, page_token=after
    )
    views = [job_view(job, request) for job in jobs]
    return {"tuningJobs": views, "nextPageToken": page_token_for(jobs[-1]) if more and jobs else None}


def _event_views(events: list[dict[str, Any]], root: Path | None) -> list[dict[str, Any]]:
    """Events as clients see them: no server paths in their messages or data (a state event carries the error)."""
    return [{**event, **{k: _hidden(event[k], root) for k in ("message", "data") if k in event}} for event in events]


def _hidden(value: Any, root: Path | None) -> Any:
    """``value`` with ``hide_server_paths`` applied to every string in it."""
    if isinstance(value, str):
        return hide_server_paths(value, root)
    if isinstance(value, dict):
        return {key: _hidden(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_hidden(item, root) for item in value]
    return value


def _labels(filters: list[str]) -> dict[str, str]:
    """``["team:nlp", "env=prod"]`` → ``{"team": "nlp", "env": "prod"}`` (neither separator can be part of a label
    key or value, so both are taken, ``=`` as the CLI writes it); 400 names each bad filter."""
    labels: dict[str, str] = {}
    problems = []
    if len(filters) > limits.MAX_LABELS:
        problems.append(("label", f"at most {limits.MAX_LABELS} filters"))
    for i, item in enumerate(filters[: limits.MAX_LABELS]):
        key, sep, value = item.partition(":") if ":" in item else item.partition("=")
        if not sep or not re.fullmatch(LABEL_KEY, key) or len(value) > limits.MAX_LABEL_LENGTH:
            problems.append((f"label[{i}]", f"{item[:80]!r}: expected key:value (or key=value) with a label key"))
        else:
            labels[key] = value
    if problems:
        raise invalid(problems)
    return labels


@router.get(
    "/{job_id}", response_model=None, summary="Read a tuning job", responses={200: {"model": TuningJob}, **ERRORS}
)
def read_job(job_id: JobId, request: Request, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return job_view(store.get_job(tenant, job_id), request)


@router.post(
    "/{job_id}:cancel",
    response_model=None,
    summary="Cancel a tuning job",
    responses={200: {"model": TuningJob}, **ERRORS},
)
def cancel_job(
    job_id: JobId, request: Request, tenant: Tenant, store: StoreDep, scheduler: SchedulerDep
) -> dict[str, Any]:
    """Ask for the job to stop: a PENDING job is CANCELLED at once, a RUNNING one CANCELLING until its worker
    has saved a checkpoint and stopped; an ended job is returned as it is."""
    job = store.request_cancel(tenant, job_id)
    wake_scheduler(scheduler)
    return job_view(job, request)


@router.get(
    "/{job_id}/events",
    response_model=None,
    summary="Read a job's events (or stream them with alt=sse)",
    responses={200: {"model": ListEventsResponse, "content": SSE_RESPONSE}, **ERRORS},
)
def read_job_events(
    job_id: JobId,
    tenant: Tenant,
    store: StoreDep,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="Events after this one (its id)")] = 0,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=limits.MAX_EVENTS_PAGE)] = 100,
    alt: Literal["json", "sse"] = "json",
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> Any:
    """State changes, metrics and logs, oldest first. ``alt=sse`` streams them as Server-Sent Events until the
    job has ended and every event is sent; ``Last-Event-ID`` resumes a stream."""
    if last_event_id is not None:
        if not last_event_id.strip().isdigit() or int(last_event_id) > 2**63 - 1:
            raise invalid([("Last-Event-ID", "expected an event's id (a whole number)")])
        after = max(after, int(last_event_id))
    if alt == "json":
        return {"events": _event_views(store.events(tenant, job_id, after, page_size), settings.data_root)}
    store.get_job(tenant, job_id)  # 404 before the stream starts
    return StreamingResponse(
        _event_stream(store, tenant, job_id, after, settings.data_root),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(store: Store, tenant: str, job_id: str, after: int, root: Path | None) -> AsyncIterator[str]:
    """Poll the store; send each event as ``id: N`` / ``data: JSON``; end once the job has ended and its
    last event is sent. A comment line every ``KEEPALIVE_SECONDS`` keeps proxies from closing a quiet stream."""
    quiet_since = time.monotonic()
    while True:
        try:
            job = await run_in_threadpool(store.get_job, tenant, job_id)  # read before the events: none missed
            events = await run_in_threadpool(store.events, tenant, job_id, after, SSE_BATCH)
        except TuneryError:
            return
        for event in _event_views(events, root):
            yield f"id: {event['id']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
            after = event["id"]
        if events:
            quiet_since = time.monotonic()
            if len(events) == SSE_BATCH:
                continue
        elif job.has_ended:
            return
        if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(POLL_SECONDS)
