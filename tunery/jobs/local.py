"""Embedded jobs (the SDK without a server): the same store, one detached worker per job, no queue.

A job submitted here starts at once in its own worker process, which outlives the Python process
that submitted it. Readers check that worker: a job whose worker is gone without ending it is marked
FAILED (or CANCELLED, if that was asked), so no job stays RUNNING forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from tunery.jobs.executor import LocalExecutor
from tunery.jobs.scheduler import worker_alive
from tunery.jobs.store import CANCELLED, CODE_CANCELLED, CODE_INTERNAL, EMBEDDED, FAILED, Job, Store, new_id
from tunery.settings import jobs_dir, tuned_models_dir
from tunery.tuning.spec import TuningSpec

TENANT = "default"
EXECUTOR = LocalExecutor()  # the embedded path: the same executor interface the server's scheduler uses
_workers: dict[int, subprocess.Popen] = {}  # workers this process started, kept so they can be reaped


def submit(spec: TuningSpec, store: Store | None = None, *, watch_parent: bool = False) -> dict[str, Any]:
    """Create a job and start its worker; returns the job resource. With ``watch_parent`` the worker stops at a
    checkpoint (the job CANCELLED) once this process has gone (``tunery tune``: the job lives while it is followed)."""
    store = store or Store()
    job_id = new_id()
    if not spec.output:
        spec.output = str(tuned_models_dir() / job_id)
    store.create_job(TENANT, spec, spec.to_request(), job_id=job_id, owner=EMBEDDED)
    store.claim_job(job_id, EMBEDDED, None, attempt=True)  # counted before the worker reads it
    process = EXECUTOR.submit(store.get_job(TENANT, job_id), store.url, watch_parent=watch_parent)
    _workers[process.pid] = process
    return store.update_job(job_id, worker_pid=process.pid).resource()


def read(job_id: str, store: Store | None = None) -> dict[str, Any]:
    store = store or Store()
    return _settled(store, store.get_job(TENANT, job_id)).resource()


def list_jobs(store: Store | None = None) -> list[dict[str, Any]]:
    store = store or Store()
    found, token = store.list_jobs(TENANT, page_size=100)
    while token:
        more, token = store.list_jobs(TENANT, page_size=100, page_token=token)
        found += more
    return [_settled(store, job).resource() for job in found]


def cancel(job_id: str, store: Store | None = None) -> dict[str, Any]:
    """Ask the job's worker to stop; it saves a checkpoint and marks the job CANCELLED."""
    store = store or Store()
    job = store.request_cancel(TENANT, job_id)
    if not job.has_ended and job.worker_owner == EMBEDDED and job.worker_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.worker_pid, signal.SIGTERM)
    return read(job_id, store)


def kill(job_id: str, store: Store | None = None) -> dict[str, Any]:
    """Stop the job's worker now (SIGKILL, no checkpoint at this step); the job then ends, CANCELLED if a cancel
    was asked, from its last checkpoint."""
    store = store or Store()
    job = store.get_job(TENANT, job_id)
    if not job.has_ended and job.worker_owner == EMBEDDED and job.worker_pid is not None:
        process = _workers.get(job.worker_pid)
        if process is not None:
            EXECUTOR.kill(process)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.worker_pid, signal.SIGKILL)
    return read(job_id, store)


def active_on(output: str | Path, store: Store | None = None) -> Job | None:
    """An embedded job not yet ended whose run directory is ``output``, if any."""
    store = store or Store()
    target = str(Path(output).resolve())
    found, token = store.list_jobs(TENANT, page_size=100)
    while token:
        more, token = store.list_jobs(TENANT, page_size=100, page_token=token)
        found += more
    for job in found:
        if not job.has_ended and job.output and str(Path(job.output).resolve()) == target:
            job = _settled(store, job)
            if not job.has_ended:
                return job
    return None


def _settled(store: Store, job: Job) -> Job:
    """``job``, ended if its embedded worker is gone without ending it."""
    if job.has_ended or job.worker_owner != EMBEDDED or job.worker_pid is None or _alive(job):
        return job
    job = store.get_job(TENANT, job.id)  # the worker may have ended it just now
    if job.has_ended:
        return job
    if job.cancel_requested:
        error = {"code": CODE_CANCELLED, "message": "cancelled"}
        return store.end_job(job.id, CANCELLED, error=error, message="cancelled")
    message = f"the worker process exited unexpectedly (log: {jobs_dir() / job.id / 'worker.log'})"
    return store.end_job(job.id, FAILED, error={"code": CODE_INTERNAL, "message": message}, message=message)


def _alive(job: Job) -> bool:
    process = _workers.get(job.worker_pid or -1)
    if process is not None:
        return process.poll() is None
    return worker_alive(job.worker_pid or -1, job.id)
