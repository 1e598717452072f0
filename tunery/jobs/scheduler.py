"""The server's scheduler: runs queued jobs in worker processes, at most ``workers`` at a time.

One thread, one loop (``tick``), woken by new jobs and cancels or every ``poll_seconds``:

1. reap workers that exited, and send SIGTERM to workers whose job has a cancel request (the worker
   checkpoints and stops);
2. record what happened to each job its worker did not end: CANCELLED (cancel requested), left to
   resume (the worker stopped at a checkpoint), FAILED with the reason (the disk was full and the
   worker could not record it), retried from its checkpoint (a crash or kill), or FAILED once it has
   run ``max_attempts`` times;
3. start jobs, oldest first, RUNNING jobs that lost their worker (the server was stopped or killed)
   before PENDING ones. A run is counted in the store before its worker starts, so the count rises
   across server restarts and a job that keeps failing without a word is not run again without end;
4. remove ended jobs' links to the uploads they trained from (``tunery.jobs.inputs``).

A store that fails (the database restarting, a full disk) never ends the loop: the tick is tried again
with backoff (``poll_seconds`` doubling to ``MAX_BACKOFF_SECONDS``, one log line each time), and an
exit not yet recorded is kept until it is.

Workers watch their parent: if the server dies, they checkpoint and exit, and the next server
resumes their jobs. ``stop()`` (server shutdown) does the same on purpose.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path

from tunery import settings
from tunery.errors import ConfigError
from tunery.jobs import inputs
from tunery.jobs.executor import EXECUTORS, EXIT_LOST, Executor, Handle, LocalExecutor
from tunery.jobs.store import (
    CANCELLED,
    CODE_CANCELLED,
    CODE_INTERNAL,
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    FAILED,
    RUNNING,
    Job,
    Store,
    short_error,
)

MAX_BACKOFF_SECONDS = 30.0


def make_executor(name: str | None = None, address: str | None = None) -> Executor:
    """The executor called ``name`` (default ``TUNERY_EXECUTOR`` or local); Ray connects to ``address``
    (default ``RAY_ADDRESS``; none: a Ray instance on this machine)."""
    name = name or settings.executor() or "local"
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from tunery.jobs.ray_executor import RayExecutor

        return RayExecutor(address)
    raise ConfigError(f"executor {name!r}: expected one of {', '.join(EXECUTORS)}")


class Scheduler:
    """Runs the store's queued jobs in worker processes (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        workers: int = 1,
        *,
        poll_seconds: float = 0.5,
        max_attempts: int = 3,
        executor: Executor | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers {workers}: expected at least 1")
        self.store, self.workers, self.poll_seconds, self.max_attempts = store, workers, poll_seconds, max_attempts
        self.owner = f"server@{socket.gethostname()}"  # any server on this host may resume another's jobs
        self.executor: Executor = executor or LocalExecutor()
        self.running: dict[str, Handle] = {}
        self.exited: dict[str, int] = {}  # workers gone whose job's end is still to be recorded (the store failed)
        self._terminated: set[str] = set()
        self.failures = 0  # ticks in a row that failed
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tunery-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop starting jobs; ask running workers to checkpoint and exit; their jobs resume on the next start."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        for process in self.running.values():
            self.executor.cancel(process)
        for job_id, process in list(self.running.items()):
            code = self.executor.wait(process, timeout)
            if code is None:
                self.executor.kill(process)
                code = process.poll()
            self.exited[job_id] = code if code is not None else EXIT_LOST
        self.running.clear()
        try:
            self._record_exits()
        except Exception as exc:  # the next server sees the jobs RUNNING without a worker and takes them on
            print(f"tunery scheduler: could not record the workers' exits: {short_error(exc)}", file=sys.stderr)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception as exc:  # the database down or its disk full: never let the loop die, nor spin
                self.failures += 1
                wait = min(self.poll_seconds * 2**self.failures, MAX_BACKOFF_SECONDS)
                print(f"tunery scheduler: {short_error(exc)}; trying again in {wait:g} s", file=sys.stderr, flush=True)
                self._stopping.wait(wait)  # new jobs and cancels do not cut the backoff short
                continue
            if self.failures:
                print("tunery scheduler: the job store answers again", file=sys.stderr, flush=True)
                self.failures = 0
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def tick(self) -> None:
        for job_id, process in list(self.running.items()):
            code = process.poll()
            if code is not None:
                del self.running[job_id]
                self._terminated.discard(job_id)
                self.exited[job_id] = code
        for job_id, process in self.running.items():
            if job_id not in self._terminated and self.store.get_job(None, job_id).cancel_requested:
                self.executor.cancel(process)
                self._terminated.add(job_id)
        self._record_exits()
        if self._stopping.is_set():
            return
        busy = len(self.running)
        for job in self.store.runnable_jobs([self.owner]):
            if job.id in self.running or job.id in self.exited:
                continue
            if job.worker_pid is not None and worker_alive(job.worker_pid, job.id):
                busy += 1  # a previous server's worker, still checkpointing on its way out: its slot is taken
                continue
            if job.cancel_requested:
                self.store.end_job(job.id, CANCELLED, error=_cancelled(), message="cancelled")
            elif job.attempts >= self.max_attempts:
                message = f"the job ran {job.attempts} times without ending; giving up ({self._last_word(job)})"
                self.store.end_job(job.id, FAILED, error={"code": CODE_INTERNAL, "message": message}, message=message)
            elif busy < self.workers:
                busy += 1
                if job.state == RUNNING and job.worker_pid is not None:
                    self.store.add_event(job.id, "state", "its worker is gone (the server stopped); resuming")
                self._launch(job)
        inputs.release_ended(self.store)

    def _record_exits(self) -> None:
        """Record each exited worker's job; one the store refuses stays in ``exited`` for the next tick."""
        for job_id, code in list(self.exited.items()):
            self._after_exit(job_id, code)
            del self.exited[job_id]

    def _last_word(self, job: Job) -> str:
        said = [e.get("message") for e in self.store.events(None, job.id, limit=10_000) if e["type"] == "state"]
        return f"last: {said[-1]}" if said and said[-1] else "no word from its workers"

    def _launch(self, job: Job) -> None:
        if self.store.claim_job(job.id, self.owner, None, attempt=True).has_ended:  # the run counts before it starts
            return  # cancelled since it was read
        process = self.executor.submit(job, self.store.url, watch_parent=True)
        self.running[job.id] = process
        self.store.update_job(job.id, worker_pid=self.executor.pid(process))

    def _after_exit(self, job_id: str, code: int) -> None:
        job = self.store.get_job(None, job_id)
        if job.has_ended:
            return
        if job.cancel_requested:
            self.store.end_job(job_id, CANCELLED, error=_cancelled(), message="cancelled")
        elif code == EXIT_INTERRUPTED:
            self.store.update_job(job_id, worker_pid=None)
        elif code == EXIT_DISK_FULL:  # the job failed, and its worker could not say so: not retried
            from tunery.jobs.worker import disk_full_after_exit  # here: ``python -m tunery.jobs.worker`` runs it

            message = disk_full_after_exit(job)
            self.store.end_job(job_id, FAILED, error={"code": CODE_INTERNAL, "message": message}, message=message)
        elif job.attempts < self.max_attempts:
            self.store.update_job(
                job_id,
                worker_pid=None,
                message=f"the worker {describe_exit(code)}; retry {job.attempts} of {self.max_attempts - 1}, "
                "from the last checkpoint",
            )
        else:
            message = f"the worker {describe_exit(code)}, {job.attempts} runs in all; giving up (its log has more)"
            self.store.end_job(job_id, FAILED, error={"code": CODE_INTERNAL, "message": message}, message=message)


def _cancelled() -> dict[str, object]:
    return {"code": CODE_CANCELLED, "message": "cancelled on request"}


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def worker_alive(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is a live (not zombie) worker of ``job_id``; a reused pid is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc: trust the signal probe
    try:
        if "\nState:\tZ" in (proc / "status").read_text():
            return False
        return job_id.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False
