"""A job's worker process: runs one tuning job and records what happened in the job store.

    python -m tunery.jobs.worker JOB_ID [--watch-parent]

The job's output directory says where it stands: a finished tuned model is not trained again, a run
with a checkpoint resumes from it, anything else starts over. Every step's metrics become an event.
SIGTERM (or, with ``--watch-parent``, the parent server going away) stops the run at the next step
boundary after a checkpoint: a cancelled job ends CANCELLED; an embedded job (no scheduler: ``sft.train``,
``tunery tune``) ends CANCELLED too, its checkpoint kept for ``--resume``; otherwise the job stays RUNNING, the
worker exits with ``EXIT_INTERRUPTED`` and a scheduler resumes it later.

A cancel is honoured in every phase: at a step, after the last step, after the save and during the
evaluation (``tunery.tuning.loop.stop_point``), and the end is one store transaction that a cancel
requested before it wins (``Store.end_job``). Store writes that fail (the database restarting, a full
disk) are retried for ``TUNERY_STORE_RETRY_SECONDS``; an end that still cannot be recorded is left to
the scheduler through the exit status (``EXIT_DISK_FULL``, or 1 like a crash).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from tunery import lifeline
from tunery.errors import DiskFullError, TuneryError, TuningCancelled, disk_full, is_disk_full
from tunery.jobs import artifacts
from tunery.jobs.stopping import StopRequests, record
from tunery.jobs.store import (
    CANCELLED,
    CODE_CANCELLED,
    CODE_INTERNAL,
    CODE_INVALID_ARGUMENT,
    EMBEDDED,
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TRANSIENT,
    Job,
    Store,
    TunedModel,
    now,
    short_error,
)
from tunery.settings import orphan_grace_seconds, tunery_home
from tunery.tuning.spec import TuningSpec


def main(job_id: str, watch_parent: bool = False) -> int:
    store = Store()
    job = record(lambda: store.get_job(None, job_id), "reading the job")
    if job.has_ended:
        return 0
    if job.tuning_mode == "BATCH_PREDICTION":  # a batch prediction job (tunery.jobs.batch)
        from tunery.jobs.batch import run_job

        return run_job(store, job, watch_parent)
    if job.tuning_mode == "EXPORT":  # an export job (tunery.jobs.export)
        from tunery.jobs.export import run_job as run_export

        return run_export(store, job, watch_parent)
    stop = StopRequests(store, job_id, watch_parent)
    spec = TuningSpec.from_dict(job.spec)
    try:
        tuned = run(store, job, spec, stop)
    except TuningCancelled as exc:
        if record(lambda: store.get_job(None, job_id), "reading the job").cancel_requested:
            error = {"code": CODE_CANCELLED, "message": str(exc)}
            return end(store, job_id, CANCELLED, message=str(exc), error=error)
        saved = Path(exc.checkpoint).name if exc.checkpoint else "none"
        if job.worker_owner == EMBEDDED:  # no scheduler resumes it: stopped, with its checkpoint to resume from
            message = f"stopped (signalled, or the tunery tune following it exited); checkpoint {saved} saved"
            return end(store, job_id, CANCELLED, message=message, error={"code": CODE_CANCELLED, "message": message})
        message = f"interrupted (the server stopped); checkpoint {saved} saved, to resume from"
        with contextlib.suppress(*TRANSIENT):  # unrecorded, the run counts as an attempt: no harm done
            record(lambda: store.give_back_attempt(job_id, message), "recording the interruption")
        return EXIT_INTERRUPTED
    except DiskFullError as exc:  # a store write during the run: its disk is full
        return end(store, job_id, FAILED, message=str(exc), error={"code": CODE_INTERNAL, "message": str(exc)})
    except TuneryError as exc:
        return end(store, job_id, FAILED, message=str(exc), error={"code": CODE_INVALID_ARGUMENT, "message": str(exc)})
    except Exception as exc:  # a bug, or the machine (disk full): the job must still end
        with contextlib.suppress(OSError):  # the log may be on the full disk
            traceback.print_exc()
        message = describe_error(exc, Path(spec.output or job.output))
        return end(store, job_id, FAILED, message=message, error={"code": CODE_INTERNAL, "message": message})
    return succeed(store, job, tuned)


def run(store: Store, job: Job, spec: TuningSpec, stop: StopRequests) -> Path:
    """Train (new, resumed, or not at all if the tuned model is complete) and return the tuned model dir."""
    from tunery.models.tuned import is_tuned_dir
    from tunery.tuning import Hooks, tune
    from tunery.tuning.checkpoint import latest_checkpoint
    from tunery.tuning.prepare import RUN_FILE

    run_dir = Path(spec.output or job.output)
    mirror = artifacts.for_job(job.id, run_dir)  # TUNERY_ARTIFACTS a URL: the run is copied there as it goes
    if mirror is not None and mirror.pull():
        message = f"copied the run back from {mirror.url} (this node had none of it)"
        record(lambda: store.add_event(job.id, "state", message), "recording an event")
    resume = (run_dir / RUN_FILE).is_file()  # a run stopped in its save or evaluation resumes too
    if not resume and is_tuned_dir(run_dir):
        record(
            lambda: store.add_event(job.id, "state", "the tuned model was already complete; recording it"),
            "recording an event",
        )
        if mirror is not None:
            mirror.push()
        return run_dir
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a run killed before it recorded itself: nothing to keep
    attempt = f"attempt {max(job.attempts, 1)}"
    where = f"resuming from checkpoint {checkpoint.name}" if checkpoint is not None else "training from step 0"
    record(lambda: store.add_event(job.id, "state", f"{attempt}: {where}", {"state": RUNNING}), "recording an event")

    def on_metrics(metrics: dict[str, Any]) -> None:
        record(lambda: store.add_event(job.id, "metrics", None, metrics), "recording the step's metrics")
        if mirror is not None:
            push_checkpoint(mirror)

    hooks = Hooks(on_metrics=on_metrics, should_stop=stop, on_phase=stop.on_phase)
    if mirror is None:
        return tune(spec, hooks, resume=resume)
    try:
        tuned = tune(spec, hooks, resume=resume)
    except TuningCancelled:
        push_checkpoint(mirror)  # the checkpoint saved as it stopped: where a retry elsewhere resumes
        raise
    mirror.push()  # the tuned model, as the copy's only files
    record(lambda: store.add_event(job.id, "state", f"tuned model copied to {mirror.url}"), "recording an event")
    return tuned


def push_checkpoint(mirror: artifacts.Mirror) -> None:
    """Copy a new checkpoint to ``TUNERY_ARTIFACTS``; a failed copy is logged and tried again at the next one."""
    try:
        mirror.push_checkpoint()
    except Exception as exc:  # the store of artifacts unreachable for a while: the run goes on
        print(f"tunery worker: copying the checkpoint to {mirror.url} failed: {short_error(exc)}", file=sys.stderr)


def succeed(store: Store, job: Job, tuned: Path) -> int:
    """SUCCEEDED with the tuned model, in one store transaction; CANCELLED if a cancel came first."""
    from tunery.models.tuned import read_manifest

    manifest = read_manifest(tuned)
    model = TunedModel(
        id=job.id,
        tenant=job.tenant,
        job_id=job.id,
        display_name=job.display_name,
        base_model=job.base_model,
        tuning_mode=job.tuning_mode,
        path=str(tuned),
        create_time=now(),
    )
    [stats] = manifest["tuningDataStats"].values()  # supervisedTuningDataStats or preferenceOptimizationDataStats
    return end(store, job.id, SUCCEEDED, message="tuned model ready", tuned=model, stats=stats)


def end(store: Store, job_id: str, state: str, **fields: Any) -> int:
    """Record the job's end (``Store.end_job``), retrying while the store fails; the exit status says what happened.

    If the end cannot be recorded, the scheduler is told by the exit status: ``EXIT_DISK_FULL`` when the job failed
    on a full disk (it records FAILED once it can), 1 otherwise (a crash: retried, and a complete tuned model is
    then recorded without training again)."""
    try:
        record(lambda: store.end_job(job_id, state, **fields), "recording the job's end")
    except TRANSIENT as exc:
        message = fields.get("message", "")
        with contextlib.suppress(OSError):  # the log may be on the full disk
            print(f"tunery worker: could not record {state} ({message}): {short_error(exc)}", file=sys.stderr)
        return EXIT_DISK_FULL if state == FAILED and (is_disk_full(exc) or "is full" in message) else 1
    return 1 if state == FAILED else 0


def where(path: Path) -> str:
    """``path`` as a job's error names it: under ``TUNERY_HOME`` by its place there, not by a server path."""
    try:
        return "TUNERY_HOME/" + str(path.resolve().relative_to(tunery_home().resolve()))
    except ValueError:
        return str(path)


def describe_error(exc: Exception, run_dir: Path) -> str:
    """The job's error message for an unexpected exception; a full disk says which disk and what is free."""
    full = disk_full(exc, run_dir, f"the tuned model ({where(run_dir)})")
    if full is None:
        return f"{type(exc).__name__}: {exc}"
    reason = os.strerror(errno.ENOSPC) if getattr(exc, "errno", None) == errno.ENOSPC else short_error(exc)
    return f"{full} ({reason})"


def disk_full_after_exit(job: Job) -> str:
    """The error of a job whose worker exited with ``EXIT_DISK_FULL``: its disk was full, nothing could be recorded."""
    run_dir = Path(job.output)
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), run_dir.anchor or ".")
    free = shutil.disk_usage(existing).free / 2**20
    return (
        f"the disk holding the tuned model ({where(run_dir)}) or the job store was full: the worker stopped and could "
        f"not record why ({free:.1f} MiB free now); free some space, then create the job again"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tunery.jobs.worker")
    parser.add_argument("job_id")
    parser.add_argument("--watch-parent", action="store_true", help="stop at a checkpoint if the parent exits")
    args = parser.parse_args()
    if args.watch_parent:  # StopRequests checkpoints at the next step; past the grace it exits anyway
        lifeline.watch_parent(grace=orphan_grace_seconds())
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecations are not the job's log
    sys.exit(main(args.job_id, args.watch_parent))
