"""The server's scheduler: runs queued jobs in worker processes, at most ``workers`` at a time.

One thread, one loop (``tick``), woken by new jobs and cancels or every ``poll_seconds``:

1. reap workers that exited: a job the worker did not end is CANCELLED (cancel requested), left to
   resume (the worker stopped at a checkpoint), retried from its checkpoint (a crash or kill, at most
   ``max_attempts`` runs in all), or FAILED with what happened;
2. send SIGTERM to workers whose job has a cancel request (the worker checkpoints and stops);
3. start jobs, oldest first, RUNNING jobs that lost their worker (the server was stopped or killed)
   before PENDING ones;
4. remove ended jobs' links to the uploads they trained from (``tunery.jobs.inputs``).

Workers watch their parent: if the server dies, they checkpoint and exit, and the next server
resumes their jobs. ``stop()`` (server shutdown) does the same on purpose.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from tunery.jobs import inputs
from tunery.jobs.store import (
    CANCELLED,
    CODE_CANCELLED,
    CODE_INTERNAL,
    EXIT_INTERRUPTED,
    FAILED,
    RUNNING,
    Job,
    Store,
)
from tunery.settings import jobs_dir


class Scheduler:
    """Runs the store's queued jobs in worker processes (see the module docstring)."""

    def __init__(self, store: Store, workers: int = 1, *, poll_seconds: float = 0.5, max_attempts: int = 3) -> None:
        if workers < 1:
            raise ValueError(f"workers {workers}: expected at least 1")
        self.store, self.workers, self.poll_seconds, self.max_attempts = store, workers, poll_seconds, max_attempts
        self.owner = f"server@{socket.gethostname()}"  # any server on this host may resume another's jobs
        self.running: dict[str, subprocess.Popen] = {}
        self._terminated: set[str] = set()
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
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for job_id, process in list(self.running.items()):
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self._after_exit(job_id, process.returncode)
        self.running.clear()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception as exc:  # the database may be briefly unavailable; never let the loop die
                print(f"tunery scheduler: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def tick(self) -> None:
        for job_id, process in list(self.running.items()):
            if process.poll() is not None:
                del self.running[job_id]
                self._terminated.discard(job_id)
                self._after_exit(job_id, process.returncode)
        for job_id, process in self.running.items():
            if job_id not in self._terminated and self.store.get_job(None, job_id).cancel_requested:
                process.send_signal(signal.SIGTERM)
                self._terminated.add(job_id)
        if self._stopping.is_set():
            return
        busy = len(self.running)
        for job in self.store.runnable_jobs([self.owner]):
            if job.id in self.running:
                continue
            if job.worker_pid is not None and worker_alive(job.worker_pid, job.id):
                busy += 1  # a previous server's worker, still checkpointing on its way out: its slot is taken
                continue
            if job.cancel_requested:
                self.store.update_job(job.id, state=CANCELLED, worker_pid=None, error=_cancelled(), message="cancelled")
            elif busy < self.workers:
                busy += 1
                if job.state == RUNNING and job.worker_pid is not None:
                    self.store.add_event(job.id, "state", "its worker is gone (the server stopped); resuming")
                self._launch(job)
        inputs.release_ended(self.store)

    def _launch(self, job: Job) -> None:
        log_dir = jobs_dir() / job.id
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TUNERY_DATABASE_URL": self.store.url}
        with (log_dir / "worker.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tunery.jobs.worker", job.id, "--watch-parent"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl-C at the server's terminal reaches workers through stop() only
            )
        self.running[job.id] = process
        self.store.claim_job(job.id, self.owner, process.pid)

    def _after_exit(self, job_id: str, code: int) -> None:
        job = self.store.get_job(None, job_id)
        if job.has_ended:
            return
        if job.cancel_requested:
            self.store.update_job(job_id, state=CANCELLED, worker_pid=None, error=_cancelled(), message="cancelled")
        elif code == EXIT_INTERRUPTED:
            self.store.update_job(job_id, worker_pid=None)
        elif job.attempts + 1 < self.max_attempts:
            self.store.update_job(
                job_id,
                worker_pid=None,
                attempts=job.attempts + 1,
                message=f"the worker {describe_exit(code)}; retry {job.attempts + 1} of {self.max_attempts - 1}, "
                "from the last checkpoint",
            )
        else:
            message = (
                f"the worker {describe_exit(code)}, {self.max_attempts} runs in all; giving up "
                f"(log: {jobs_dir() / job_id / 'worker.log'})"
            )
            self.store.update_job(
                job_id,
                state=FAILED,
                worker_pid=None,
                error={"code": CODE_INTERNAL, "message": message},
                message=message,
            )


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
