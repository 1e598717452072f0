"""The Ray executor: each job's worker runs on a Ray cluster node with the CPUs/GPUs/memory it asks for.

    RAY_ADDRESS=127.0.0.1:6379 tunery serve --executor ray

Each job is one Ray actor (``num_cpus``/``num_gpus``/``memory`` from ``tunery.jobs.executor.job_resources``);
Ray places it on a node with those free and holds it pending while none is. The actor runs the same worker
as the local executor (``python -m tunery.jobs.worker JOB_ID --watch-parent``) against the same store, so
the store (PostgreSQL for a cluster) stays the one source of truth. Checkpoints and the tuned model go to
the job's output, under ``TUNERY_ARTIFACTS`` (a path every node reaches), or on the node and copied to
``TUNERY_ARTIFACTS`` when that is an fsspec URL (``s3://...``: ``tunery.jobs.artifacts``). The actor is
never restarted by Ray (``max_restarts=0``): a lost node or a killed worker is an exit the scheduler sees and
retries from the last checkpoint, under the attempt count the store keeps, so a job is never run twice at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tunery.errors import ConfigError
from tunery.jobs.executor import EXIT_LOST, Resources, job_resources, worker_command
from tunery.jobs.store import Job

MISSING = "--executor ray needs Ray: pip install 'tunery[ray]'"
PASSED_ENV = ("TUNERY_", "HF_", "TRANSFORMERS_", "OMP_NUM_THREADS", "PYTHONPATH")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(MISSING) from None
    return ray


class _JobWorker:
    """The actor: runs one job's worker subprocess on its node; ``terminate`` asks it to checkpoint and stop."""

    def __init__(self, job_id: str, env: dict[str, str]) -> None:
        self.job_id, self.env = job_id, env
        self.process: subprocess.Popen | None = None

    def run(self) -> int:
        home = self.env.get("TUNERY_HOME") or os.path.expanduser("~/.tunery")
        log_dir = os.path.join(home, "jobs", self.job_id)
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, "worker.log"), "ab") as log:
            command = worker_command(self.job_id, watch_parent=True)
            command[0] = sys.executable  # this node's interpreter
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
            return self.process.wait()

    def terminate(self) -> bool:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return True
        return False

    def node(self) -> str:
        return _ray().get_runtime_context().get_node_id()


@dataclass
class RayHandle:
    job_id: str
    actor: Any
    ref: Any
    code: int | None = None
    cancelled: bool = field(default=False)

    def poll(self) -> int | None:
        if self.code is not None:
            return self.code
        ray = _ray()
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            self.code = int(ray.get(self.ref))
        except Exception as exc:  # the actor died: its node was lost, or it was killed
            print(f"tunery ray: job {self.job_id}'s worker was lost: {type(exc).__name__}", file=sys.stderr)
            self.code = EXIT_LOST
        ray.kill(self.actor, no_restart=True)  # its resources go back to the cluster
        return self.code


class RayExecutor:
    """Runs job workers as Ray actors (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        ray = _ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        self._actor = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=2)(_JobWorker)

    def resources(self, job: Job) -> Resources:
        return job_resources(job)

    def submit(self, job: Job, store_url: str, *, watch_parent: bool = False) -> RayHandle:
        wanted = self.resources(job)
        env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
        env["TUNERY_DATABASE_URL"] = store_url
        options: dict[str, Any] = {"num_cpus": wanted.cpus, "num_gpus": wanted.gpus}
        if wanted.memory:
            options["memory"] = wanted.memory
        actor = self._actor.options(**options).remote(job.id, env)
        return RayHandle(job.id, actor, actor.run.remote())

    def cancel(self, handle: Any) -> None:
        handle.cancelled = True
        if handle.poll() is None:
            handle.actor.terminate.remote()

    def alive(self, handle: Any) -> bool:
        return handle.poll() is None

    def pid(self, handle: Any) -> int | None:
        return None  # it runs on a node of the cluster: the store records no local pid

    def wait(self, handle: Any, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while handle.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return handle.poll()

    def kill(self, handle: Any) -> None:
        _ray().kill(handle.actor, no_restart=True)
        handle.code = handle.code if handle.code is not None else EXIT_LOST
