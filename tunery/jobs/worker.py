"""A job's worker process: runs one tuning job and records what happened in the job store.

    python -m tunery.jobs.worker JOB_ID [--watch-parent]

The job's output directory says where it stands: a finished tuned model is not trained again, a run
with a checkpoint resumes from it, anything else starts over. Every step's metrics become an event.
SIGTERM (or, with ``--watch-parent``, the parent server going away) stops the run at the next step
boundary after a checkpoint: a cancelled job ends CANCELLED; otherwise the job stays RUNNING, the
worker exits with ``EXIT_INTERRUPTED`` and a scheduler resumes it later.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from tunery.errors import TuneryError, TuningCancelled
from tunery.jobs.store import (
    CANCELLED,
    CODE_CANCELLED,
    CODE_INTERNAL,
    CODE_INVALID_ARGUMENT,
    EXIT_INTERRUPTED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    Job,
    Store,
    TunedModel,
    now,
)
from tunery.tuning.spec import TuningSpec

CANCEL_POLL_SECONDS = 2.0


class StopRequests:
    """``Hooks.should_stop`` for a worker: a signal, the parent gone, or a cancel recorded in the store."""

    def __init__(self, store: Store, job_id: str, watch_parent: bool) -> None:
        self.store, self.job_id = store, job_id
        self.parent = os.getppid() if watch_parent else None
        self.signalled = False
        self._checked = 0.0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, *_: Any) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        if self.signalled or (self.parent is not None and os.getppid() != self.parent):
            return True
        if time.monotonic() - self._checked > CANCEL_POLL_SECONDS:
            self._checked = time.monotonic()
            return self.store.get_job(None, self.job_id).cancel_requested
        return False


def main(job_id: str, watch_parent: bool = False) -> int:
    store = Store()
    job = store.get_job(None, job_id)
    if job.has_ended:
        return 0
    stop = StopRequests(store, job_id, watch_parent)
    spec = TuningSpec.from_dict(job.spec)
    try:
        tuned = run(store, job, spec, stop)
    except TuningCancelled as exc:
        if store.get_job(None, job_id).cancel_requested:
            store.update_job(
                job_id, state=CANCELLED, error={"code": CODE_CANCELLED, "message": str(exc)}, message=str(exc)
            )
            return 0
        saved = Path(exc.checkpoint).name if exc.checkpoint else "none"
        store.add_event(job_id, "state", f"interrupted (the server stopped); checkpoint {saved} saved, to resume from")
        return EXIT_INTERRUPTED
    except TuneryError as exc:
        fail(store, job_id, CODE_INVALID_ARGUMENT, str(exc))
        return 1
    except Exception as exc:  # a bug, or the machine (disk full): the job must still end
        traceback.print_exc()
        fail(store, job_id, CODE_INTERNAL, describe_error(exc, Path(spec.output or job.output)))
        return 1
    succeed(store, job, tuned)
    return 0


def run(store: Store, job: Job, spec: TuningSpec, stop: StopRequests) -> Path:
    """Train (new, resumed, or not at all if the tuned model is complete) and return the tuned model dir."""
    from tunery.models.tuned import is_tuned_dir
    from tunery.tuning import Hooks, tune
    from tunery.tuning.checkpoint import latest_checkpoint
    from tunery.tuning.prepare import RUN_FILE

    run_dir = Path(spec.output or job.output)
    if is_tuned_dir(run_dir):
        store.add_event(job.id, "state", "the tuned model was already complete; recording it")
        return run_dir
    resume = (run_dir / RUN_FILE).is_file()
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a run killed before it recorded itself: nothing to keep
    attempt = f"attempt {job.attempts + 1}"
    where = f"resuming from checkpoint {checkpoint.name}" if checkpoint is not None else "training from step 0"
    store.add_event(job.id, "state", f"{attempt}: {where}", {"state": RUNNING})

    def on_metrics(record: dict[str, Any]) -> None:
        store.add_event(job.id, "metrics", None, record)

    return tune(spec, Hooks(on_metrics=on_metrics, should_stop=stop), resume=resume)


def succeed(store: Store, job: Job, tuned: Path) -> None:
    from tunery.models.tuned import read_manifest

    manifest = read_manifest(tuned)
    store.add_tuned_model(
        TunedModel(
            id=job.id,
            tenant=job.tenant,
            job_id=job.id,
            display_name=job.display_name,
            base_model=job.base_model,
            tuning_mode=job.tuning_mode,
            path=str(tuned),
            create_time=now(),
        )
    )
    store.update_job(
        job.id,
        state=SUCCEEDED,
        tuned_model_id=job.id,
        stats=manifest["tuningDataStats"]["supervisedTuningDataStats"],
        message="tuned model ready",
    )


def describe_error(exc: Exception, run_dir: Path) -> str:
    """The job's error message for an unexpected exception; a full disk says which disk and what is free."""
    text = f"{type(exc).__name__}: {exc}"
    if getattr(exc, "errno", None) != errno.ENOSPC and "No space left on device" not in text:
        return text
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free / 2**20
    return (
        f"the disk holding {run_dir} is full ({free:.1f} MiB free): free some space, then create the job again ({text})"
    )


def fail(store: Store, job_id: str, code: int, message: str) -> None:
    store.update_job(job_id, state=FAILED, error={"code": code, "message": message}, message=message)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tunery.jobs.worker")
    parser.add_argument("job_id")
    parser.add_argument("--watch-parent", action="store_true", help="stop at a checkpoint if the parent exits")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecations are not the job's log
    sys.exit(main(args.job_id, args.watch_parent))
