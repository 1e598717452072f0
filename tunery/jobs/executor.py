"""Where a job's worker runs: one interface, two implementations.

An ``Executor`` starts a job's worker (``python -m tunery.jobs.worker JOB_ID``, the same code everywhere),
asks it to stop, and says whether it is still alive and how it ended. The store stays the one source of
truth: the scheduler (``tunery.jobs.scheduler``) reads the jobs to run from it and records what each
worker's exit means (retry from the checkpoint, CANCELLED, FAILED), whatever executor ran it.

- ``LocalExecutor``: a detached subprocess on this machine (the default; the SDK's embedded jobs too).
- ``RayExecutor`` (``tunery.jobs.ray_executor``): a Ray task on a node with the job's CPUs/GPUs/memory;
  ``tunery serve --executor ray`` and ``RAY_ADDRESS``.

The scheduler picks one by name (``tunery.jobs.scheduler.make_executor``).

The exit status follows the worker's: 0 ended, ``EXIT_INTERRUPTED`` stopped at a checkpoint, anything else
(a negative status: killed by that signal; ``EXIT_LOST``: the node or the task was lost) a crash that the
scheduler retries from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Protocol

from tunery import lifeline
from tunery.errors import ConfigError
from tunery.jobs.store import Job
from tunery.settings import jobs_dir

EXIT_LOST = -9  # the worker's node or task was lost: read like a SIGKILL, retried from the checkpoint
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Resources:
    """What one job's worker asks for: CPUs, GPUs and memory (bytes; 0 = no reservation)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int = 0

    def __post_init__(self) -> None:
        for name in ("cpus", "gpus", "memory"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"resources {name} {value}: expected 0 or more")


def job_resources(job: Job) -> Resources:
    """The resources ``job`` asks for, from its spec's ``device`` and ``processes``:
    one GPU per process on CUDA, one CPU per process otherwise (at least one CPU always)."""
    spec = job.spec or {}
    processes = max(int(spec.get("processes") or 1), 1)
    device = str(spec.get("device") or "auto")
    gpus = float(processes) if device.startswith("cuda") else 0.0
    memory = int(spec.get("memory_bytes") or 0)
    return Resources(cpus=float(processes), gpus=gpus, memory=memory)


class Handle(Protocol):
    """One started worker."""

    def poll(self) -> int | None:
        """Its exit status, or None while it runs."""
        ...


class Executor(Protocol):
    """Starts, stops and watches job workers (see the module docstring)."""

    name: str

    def submit(self, job: Job, store_url: str, *, watch_parent: bool = False) -> Handle:
        """Start ``job``'s worker (the run is already counted in the store)."""
        ...

    def cancel(self, handle: Handle) -> None:
        """Ask the worker to checkpoint and stop (SIGTERM); it records the end itself."""
        ...

    def alive(self, handle: Handle) -> bool:
        """Whether the worker is still running."""
        ...

    def pid(self, handle: Handle) -> int | None:
        """The worker's pid on this machine (recorded in the store), or None when it runs elsewhere."""
        ...

    def resources(self, job: Job) -> Resources:
        """What ``job`` asks for."""
        ...

    def wait(self, handle: Handle, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the worker to exit; its status, or None if it still runs."""
        ...

    def kill(self, handle: Handle) -> None:
        """Stop the worker now."""
        ...


def worker_command(job_id: str, watch_parent: bool) -> list[str]:
    return [sys.executable, "-m", "tunery.jobs.worker", job_id, *(["--watch-parent"] if watch_parent else [])]


class LocalExecutor:
    """Each job's worker is a detached subprocess on this machine, logging to ``jobs/<id>/worker.log``."""

    name = "local"

    def submit(self, job: Job, store_url: str, *, watch_parent: bool = False) -> subprocess.Popen:
        log_dir = jobs_dir() / job.id
        log_dir.mkdir(parents=True, exist_ok=True)
        watch = lifeline.child_env() if watch_parent else {}
        with (log_dir / "worker.log").open("ab") as log:
            return subprocess.Popen(
                worker_command(job.id, watch_parent),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TUNERY_DATABASE_URL": store_url, **watch},
                start_new_session=True,  # a Ctrl-C at the caller's terminal reaches workers through cancel() only
            )

    def cancel(self, handle: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            handle.send_signal(signal.SIGTERM)

    def alive(self, handle: Any) -> bool:
        return handle.poll() is None

    def pid(self, handle: Any) -> int | None:
        return int(handle.pid)

    def resources(self, job: Job) -> Resources:
        return job_resources(job)

    def wait(self, handle: Any, timeout: float) -> int | None:
        try:
            return int(handle.wait(timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self, handle: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            handle.kill()
        handle.wait()
