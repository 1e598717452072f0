"""The scheduler with real worker processes and tiny models: order, retries after kills, cancel, shutdown.

.venv/bin/python -m pytest tests/unit/test_scheduler.py -x -q
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tunery.jobs import inputs
from tunery.jobs.scheduler import Scheduler
from tunery.jobs.store import CANCELLED, FAILED, RUNNING, SUCCEEDED, Job, Store, new_id
from tunery.tuning.spec import TuningSpec


@pytest.fixture
def store(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield opened
    opened.close()


@pytest.fixture
def scheduler(store):
    started: list[Scheduler] = []

    def start(workers: int = 1, **kwargs) -> Scheduler:
        sched = Scheduler(store, workers, poll_seconds=0.1, **kwargs)
        sched.start()
        started.append(sched)
        return sched

    yield start
    for sched in started:
        sched.stop(timeout=30)


def submit(store: Store, tiny_model: Path, train: Path, output: Path, **kwargs) -> Job:
    spec = TuningSpec(
        train=str(train),
        base_model=str(tiny_model),
        output=str(output),
        batch_size=2,
        **{"auto_validation": False, **kwargs},
    )
    return store.create_job("acme", spec, {"supervisedTuningSpec": {"trainingDatasetUri": str(train)}})[0]


def wait_for(predicate: Callable[[], object], timeout: float = 120, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(0.05)
    return value


def metric_steps(store: Store, job_id: str) -> list[int]:
    return [e["data"]["step"] for e in store.events("acme", job_id) if e["type"] == "metrics"]


def messages(store: Store, job_id: str) -> list[str]:
    return [e.get("message", "") for e in store.events("acme", job_id)]


def test_jobs_beyond_the_worker_count_wait_and_run_in_order(store, scheduler, tiny_model, make_train, tmp_path):
    jobs = [submit(store, tiny_model, make_train(6), tmp_path / f"out{i}", epochs=1) for i in range(3)]
    scheduler(workers=1)
    for job in jobs:
        wait_for(lambda job=job: store.get_job("acme", job.id).has_ended, what=f"end of {job.id}")
    ended = [store.get_job("acme", job.id) for job in jobs]
    assert [job.state for job in ended] == [SUCCEEDED] * 3, [job.error for job in ended]
    for earlier, later in zip(ended, ended[1:]):
        assert earlier.end_time <= later.start_time  # one at a time, oldest first
    assert store.get_tuned_model("acme", jobs[0].id).path == str(tmp_path / "out0")


def test_a_killed_worker_is_retried_from_its_checkpoint(store, scheduler, tiny_model, make_train, tmp_path):
    job = submit(store, tiny_model, make_train(40), tmp_path / "out", epochs=3, checkpoint_seconds=0.2)
    scheduler(workers=1)
    checkpoints = tmp_path / "out" / "checkpoints" / "latest"
    wait_for(lambda: checkpoints.exists() and len(metric_steps(store, job.id)) >= 25, what="a checkpoint mid-run")
    os.kill(store.get_job("acme", job.id).worker_pid, signal.SIGKILL)
    wait_for(lambda: store.get_job("acme", job.id).has_ended, what="the job's end")
    ended = store.get_job("acme", job.id)
    assert ended.state == SUCCEEDED and ended.attempts == 2, ended.error  # runs, each counted before it starts
    log = messages(store, job.id)
    assert any("killed by SIGKILL; retry 1 of 2" in m for m in log), log
    events = store.events("acme", job.id)
    resumed = [i for i, e in enumerate(events) if "resuming from checkpoint step-" in (e.get("message") or "")]
    assert len(resumed) == 1, log
    checkpoint_step = int(events[resumed[0]]["message"].rsplit("step-", 1)[1].split()[0])
    before = [e["data"]["step"] for e in events[: resumed[0]] if e["type"] == "metrics"]
    after = [e["data"]["step"] for e in events[resumed[0] :] if e["type"] == "metrics"]
    # The kill may land just after a checkpoint (nothing to redo) or steps past it (those are redone);
    # either way the retry continues from the checkpoint, not from step 0, and runs to the end.
    assert 0 < checkpoint_step <= before[-1], (checkpoint_step, before)
    assert after == list(range(checkpoint_step + 1, 61)), after


def test_a_worker_killed_every_time_fails_the_job_with_what_happened(
    store, scheduler, tiny_model, make_train, tmp_path
):
    job = submit(store, tiny_model, make_train(40), tmp_path / "out", epochs=20)
    scheduler(workers=1, max_attempts=2)
    for _ in range(2):
        pid = wait_for(
            lambda: (j := store.get_job("acme", job.id)).worker_pid and metric_steps(store, job.id) and j.worker_pid,
            what="a running worker",
        )
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda pid=pid: store.get_job("acme", job.id).worker_pid != pid, what="the worker's exit")
    wait_for(lambda: store.get_job("acme", job.id).has_ended, what="the job's end")
    ended = store.get_job("acme", job.id)
    assert ended.state == FAILED and ended.error["code"] == 13
    assert "killed by SIGKILL, 2 runs in all" in ended.error["message"]
    assert ended.end_time and ended.worker_pid is None


def test_cancel_stops_the_worker_within_seconds_and_keeps_the_job(store, scheduler, tiny_model, make_train, tmp_path):
    job = submit(store, tiny_model, make_train(40), tmp_path / "out", epochs=50)
    sched = scheduler(workers=1)
    wait_for(lambda: metric_steps(store, job.id), what="training")
    asked = time.monotonic()
    store.request_cancel("acme", job.id)
    sched.wake()
    wait_for(lambda: store.get_job("acme", job.id).has_ended, timeout=30, what="the cancel")
    assert time.monotonic() - asked < 10
    ended = store.get_job("acme", job.id)
    assert ended.state == CANCELLED and ended.error["code"] == 1
    assert (tmp_path / "out" / "checkpoints" / "latest").exists()  # the worker checkpointed on its way out


def test_a_stopped_server_leaves_the_job_running_and_the_next_one_resumes_it(
    store, scheduler, tiny_model, make_train, tmp_path
):
    job = submit(store, tiny_model, make_train(40), tmp_path / "out", epochs=3)
    first = Scheduler(store, 1, poll_seconds=0.1)
    first.start()
    wait_for(lambda: len(metric_steps(store, job.id)) >= 5, what="training")
    first.stop(timeout=60)
    paused = store.get_job("acme", job.id)
    assert paused.state == RUNNING and paused.worker_pid is None and paused.attempts == 0
    stopped_at = metric_steps(store, job.id)[-1]
    scheduler(workers=1)
    wait_for(lambda: store.get_job("acme", job.id).has_ended, what="the job's end")
    assert store.get_job("acme", job.id).state == SUCCEEDED
    steps = metric_steps(store, job.id)
    assert steps[len(steps) - (60 - stopped_at) :] == list(range(stopped_at + 1, 61))  # no step trained twice


def test_a_machine_error_in_the_worker_fails_the_job_with_its_message(
    store, scheduler, tiny_model, make_train, tmp_path
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    job = submit(store, tiny_model, make_train(6), blocker / "out", epochs=1)  # the run directory cannot be made
    scheduler(workers=1)
    wait_for(lambda: store.get_job("acme", job.id).has_ended, what="the job's end")
    ended = store.get_job("acme", job.id)
    assert ended.state == FAILED and ended.attempts == 1  # an error the worker caught: not retried
    assert ended.error["code"] == 13 and "NotADirectoryError" in ended.error["message"], ended.error


@pytest.fixture
def full_disk(tmp_path):
    """A directory on a 32 KiB tmpfs: room for a run directory and its first lines, not for a checkpoint."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_job_with_its_message_not_left_running(
    store, scheduler, tiny_model, make_train, full_disk
):
    job = submit(store, tiny_model, make_train(12), full_disk / "out", epochs=2)
    scheduler(workers=1)
    wait_for(lambda: store.get_job("acme", job.id).has_ended, what="the job's end")
    ended = store.get_job("acme", job.id)
    assert ended.state == FAILED and ended.attempts == 1, ended
    assert ended.error["code"] == 13 and "the disk holding" in ended.error["message"], ended.error
    assert "No space left on device" in ended.error["message"]


def test_an_ended_jobs_links_to_its_uploads_are_removed(store, scheduler, tiny_model, make_train, tmp_path):
    job_id, creating = new_id(), new_id()
    train = inputs.pin(job_id, {"train": make_train(6)})["train"]
    being_created = inputs.pin(creating, {"train": make_train(6)})["train"]  # pinned, not stored yet
    spec = TuningSpec(train=str(train), base_model=str(tiny_model), output=str(tmp_path / "out"), batch_size=2)
    store.create_job("acme", spec, {"supervisedTuningSpec": {"trainingDatasetUri": "files/x"}}, job_id=job_id)
    scheduler(workers=1)
    wait_for(lambda: store.get_job("acme", job_id).has_ended, what="the job's end")
    assert store.get_job("acme", job_id).state == SUCCEEDED
    wait_for(lambda: not train.parent.exists(), timeout=10, what="the job's inputs removed")
    assert being_created.is_file() and make_train(6).is_file()
    inputs.release(creating)


def test_the_run_count_is_stored_so_a_job_that_never_ends_is_not_run_again_after_restarts(
    store, scheduler, tiny_model, make_train, tmp_path
):
    """Each run is counted before its worker starts: a job whose runs all died without a word (its server killed
    each time) is FAILED by the next server once it has run ``max_attempts`` times, not started again."""
    from tunery.jobs.scheduler import Scheduler

    job = submit(store, tiny_model, make_train(6), tmp_path / "out", epochs=1)
    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = Scheduler(store).owner
    for _ in range(3):  # three servers each started a worker for it and were killed before recording anything
        store.claim_job(job.id, owner, None, attempt=True)
        store.update_job(job.id, worker_pid=gone.pid)
    assert store.get_job("acme", job.id).attempts == 3
    scheduler(workers=1, max_attempts=3)
    wait_for(lambda: store.get_job("acme", job.id).has_ended, timeout=30, what="the job's end")
    ended = store.get_job("acme", job.id)
    assert ended.state == FAILED and ended.attempts == 3 and ended.worker_pid is None
    assert "ran 3 times without ending; giving up" in ended.error["message"], ended.error
    assert not any(m.startswith("attempt ") for m in messages(store, job.id))  # no worker was started
    assert not (tmp_path / "out").exists()


def test_a_cancel_requested_before_the_end_wins_over_succeeded_and_failed(store, tmp_path):
    """``Store.end_job`` is one transaction: a worker that finished after the cancel was accepted records CANCELLED,
    and its tuned model is not recorded; a job that has ended is not ended again."""
    from tunery.jobs.store import CODE_CANCELLED, TunedModel, now

    spec = TuningSpec(train="t.jsonl", base_model="tiny", output=str(tmp_path / "out"))
    jobs = [store.create_job("acme", spec, {})[0] for _ in range(3)]
    for job in jobs:
        store.claim_job(job.id, "server@x", 4242, attempt=True)
    for job in jobs[:2]:
        assert store.request_cancel("acme", job.id).cancel_requested
    model = TunedModel(jobs[0].id, "acme", jobs[0].id, "m", "tiny", "PEFT_ADAPTER", str(tmp_path), now())
    ended = store.end_job(jobs[0].id, SUCCEEDED, message="tuned model ready", tuned=model, stats={"x": 1})
    assert ended.state == CANCELLED and ended.error["code"] == CODE_CANCELLED and ended.tuned_model_id is None
    assert store.list_tuned_models("acme") == []
    failed = store.end_job(jobs[1].id, FAILED, message="boom", error={"code": 13, "message": "boom"})
    assert failed.state == CANCELLED and "boom" in messages(store, jobs[1].id)[-1]
    done = store.end_job(jobs[2].id, SUCCEEDED, message="tuned model ready")
    assert done.state == SUCCEEDED and done.end_time and done.worker_pid is None
    assert store.request_cancel("acme", jobs[2].id).state == SUCCEEDED  # too late: the end stands
    assert store.end_job(jobs[2].id, FAILED, message="late").state == SUCCEEDED
    assert all(store.get_job("acme", job.id).has_ended for job in jobs)
