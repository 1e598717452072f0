"""Embedded tuning jobs: a directory per job under ``$TUNERY_HOME/jobs`` and a worker process each.

``job.json`` is the job resource (Vertex-shaped, camelCase); only the worker writes it while the job
runs, always atomically; a cancel request is a marker file plus SIGTERM. A reader that finds a job
RUNNING whose worker is gone marks it FAILED, so a killed worker never leaves a job stuck.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunery.errors import JobError
from tunery.settings import jobs_dir
from tunery.tuning.checkpoint import write_atomic
from tunery.tuning.spec import TuningSpec

PENDING, RUNNING, SUCCEEDED, FAILED = (
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
)
CANCELLING, CANCELLED = "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"
ENDED = {SUCCEEDED, FAILED, CANCELLED}
CANCEL_FILE = "cancel.requested"
_workers: dict[int, subprocess.Popen] = {}  # workers this process started, kept to reap them


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_dir(job_id: str) -> Path:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise JobError(f"invalid job id {job_id!r}")
    return jobs_dir() / job_id


def write_job(job: dict[str, Any]) -> None:
    job["updateTime"] = now()
    write_atomic(job_dir(job["name"].split("/")[-1]) / "job.json", json.dumps(job, indent=2))


def submit(spec: TuningSpec) -> dict[str, Any]:
    """Create a PENDING job and start its worker; returns the job resource."""
    job_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)
    path = job_dir(job_id)
    path.mkdir(parents=True)
    if not spec.output:
        from tunery.settings import tuned_models_dir

        spec.output = str(tuned_models_dir() / job_id)
    job = {
        "name": f"tuningJobs/{job_id}",
        "baseModel": spec.base_model,
        "tunedModelDisplayName": spec.display_name or job_id,
        "tuningMode": spec.method,
        "state": PENDING,
        "createTime": now(),
        "labels": spec.labels,
        "spec": spec.to_dict(),
    }
    write_job(job)
    with (path / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunery.jobs.worker", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (path / "worker.pid").write_text(str(process.pid))
    _workers[process.pid] = process
    return job


def read(job_id: str) -> dict[str, Any]:
    path = job_dir(job_id) / "job.json"
    if not path.is_file():
        raise JobError(f"no tuning job {job_id!r}")
    job = json.loads(path.read_text())
    if job["state"] not in ENDED and not _worker_alive(job_id):
        job = json.loads(path.read_text())  # the worker may have finished between the two reads
        if job["state"] not in ENDED and (job_dir(job_id) / CANCEL_FILE).exists():
            job.update(state=CANCELLED, endTime=now(), error={"code": 1, "message": "cancelled before the run started"})
            write_job(job)
        elif job["state"] not in ENDED:
            job.update(
                state=FAILED, endTime=now(), error={"code": 13, "message": "the worker process exited unexpectedly"}
            )
            write_job(job)
    if job["state"] not in ENDED and (job_dir(job_id) / CANCEL_FILE).exists():
        job["state"] = CANCELLING
    return job


def list_jobs() -> list[dict[str, Any]]:
    root = jobs_dir()
    names = (
        sorted((p.name for p in root.iterdir() if (p / "job.json").is_file()), reverse=True) if root.is_dir() else []
    )
    return [read(name) for name in names]


def cancel(job_id: str) -> dict[str, Any]:
    """Ask the worker to stop; it saves a checkpoint and marks the job CANCELLED."""
    job = read(job_id)
    if job["state"] in ENDED:
        return job
    (job_dir(job_id) / CANCEL_FILE).touch()
    pid = _pid(job_id)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return read(job_id)


def _pid(job_id: str) -> int | None:
    path = job_dir(job_id) / "worker.pid"
    return int(path.read_text()) if path.is_file() else None


def _worker_alive(job_id: str) -> bool:
    pid = _pid(job_id)
    if pid is None:
        return True  # not started yet
    if pid in _workers:
        return _workers[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "\nState:\tZ" in status.read_text())
