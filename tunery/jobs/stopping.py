"""How a job's worker is told to stop, and how it writes to the store: shared by the tuning, batch and export runs.

stop = StopRequests(store, job_id, watch_parent)   # Hooks.should_stop: a signal, the parent gone, a cancel
record(lambda: store.add_event(job_id, "state", "..."), "recording an event")   # retried while the store is down
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from tunery.jobs.store import TRANSIENT, Store, retrying
from tunery.settings import fault_pause_at, jobs_dir, store_retry_seconds

CANCEL_POLL_SECONDS = 2.0
FAULT_PAUSE_SECONDS = 120.0


class StopRequests:
    """``Hooks.should_stop`` for a worker: a signal, the parent gone, or a cancel recorded in the store.

    The store is asked at most every ``CANCEL_POLL_SECONDS`` during training, and at once after the run enters
    the save or the evaluation; a store that cannot be read (restarting) is no stop request."""

    def __init__(self, store: Store, job_id: str, watch_parent: bool) -> None:
        self.store, self.job_id = store, job_id
        self.parent = os.getppid() if watch_parent else None
        self.signalled = False
        self._checked = 0.0
        self._paused: set[str] = set()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, *_: Any) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        if self.signalled or (self.parent is not None and os.getppid() != self.parent):
            return True
        if time.monotonic() - self._checked > CANCEL_POLL_SECONDS:
            self._checked = time.monotonic()
            try:
                return self.store.get_job(None, self.job_id).cancel_requested
            except TRANSIENT:
                return False  # asked again at the next check
        return False

    def on_phase(self, phase: str) -> None:
        """``Hooks.on_phase``: the save and the evaluation are events, and check the store for a cancel at once."""
        if not phase.startswith("step "):
            self._checked = 0.0
            what = "saving the tuned model" if phase == "save" else "evaluating the tuned model on the validation file"
            record(lambda: self.store.add_event(self.job_id, "state", what), "recording the phase")
        if phase in (fault_pause_at() or "").split(",") and phase not in self._paused:
            self._paused.add(phase)
            pause_for_fault_test(self.job_id, phase)
            self._checked = 0.0  # what the test did while the run was held is seen at the next check


def pause_for_fault_test(job_id: str, phase: str) -> None:
    """``TUNERY_FAULT_PAUSE_AT``: create ``jobs/<id>/paused`` and wait (at most ``FAULT_PAUSE_SECONDS``) until a test
    has done what it does at this phase (cancel, fill the disk, restart the database) and removed the file."""
    marker = jobs_dir() / job_id / "paused"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(phase)
    print(f"tunery worker: paused at {phase} until {marker} is removed", file=sys.stderr, flush=True)
    deadline = time.monotonic() + FAULT_PAUSE_SECONDS
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def record(write: Any, what: str) -> Any:
    """A store write, retried for ``TUNERY_STORE_RETRY_SECONDS`` while the store is down or its disk full."""
    return retrying(write, store_retry_seconds(), what)
