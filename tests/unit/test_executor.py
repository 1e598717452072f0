"""The executor interface: resources a job asks for, choosing an executor, and the scheduler driving any executor
(a worker lost mid-run is retried from the store, one job row, never left RUNNING).

.venv/bin/python -m pytest tests/unit/test_executor.py -q
"""

from __future__ import annotations

import sys
import time

import pytest

from tunery.errors import ConfigError
from tunery.jobs.executor import EXIT_LOST, LocalExecutor, Resources, job_resources
from tunery.jobs.scheduler import Scheduler, make_executor
from tunery.jobs.store import RUNNING, SUCCEEDED, Store
from tunery.tuning.spec import TuningSpec


@pytest.fixture
def store(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield opened
    opened.close()


def make_job(store: Store, tmp_path, **kwargs):
    spec = TuningSpec(train=str(tmp_path / "train.jsonl"), output=str(tmp_path / "out"), **kwargs)
    return store.create_job("acme", spec, {"supervisedTuningSpec": {"trainingDatasetUri": spec.train}})[0]


def test_a_job_asks_for_one_cpu_per_process_and_one_gpu_per_process_on_cuda(store, tmp_path):
    assert job_resources(make_job(store, tmp_path)) == Resources(cpus=1.0, gpus=0.0, memory=0)
    assert job_resources(make_job(store, tmp_path, device="cuda", processes=2)) == Resources(2.0, 2.0, 0)
    assert job_resources(make_job(store, tmp_path, device="cpu", processes=2)) == Resources(2.0, 0.0, 0)
    with pytest.raises(ConfigError, match="cpus -1"):
        Resources(cpus=-1)


def test_the_executor_is_named_and_ray_says_how_to_install_it(monkeypatch):
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(ConfigError, match="executor 'slurm'"):
        make_executor("slurm")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the extra
    with pytest.raises(ConfigError, match=r"pip install 'tunery\[ray\]'"):
        make_executor("ray")


class Handle:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


class LosingExecutor:
    """The first run's worker is lost (its node gone); the second ends the job, as a worker does."""

    name = "fake"

    def __init__(self, store: Store) -> None:
        self.store, self.submitted, self.cancelled = store, [], []

    def submit(self, job, store_url, *, watch_parent=False):
        self.submitted.append((job.id, self.store.get_job(None, job.id).attempts))
        if len(self.submitted) == 1:
            return Handle(EXIT_LOST)
        self.store.end_job(job.id, SUCCEEDED, message="tuned model ready")
        return Handle(0)

    def cancel(self, handle):
        self.cancelled.append(handle)

    def alive(self, handle):
        return handle.poll() is None

    def pid(self, handle):
        return None

    def resources(self, job):
        return job_resources(job)

    def wait(self, handle, timeout):
        return handle.poll()

    def kill(self, handle):
        handle.code = EXIT_LOST


def test_the_scheduler_retries_a_lost_worker_through_any_executor_without_a_duplicate(store, tmp_path):
    job = make_job(store, tmp_path)
    executor = LosingExecutor(store)
    sched = Scheduler(store, 1, poll_seconds=0.05, executor=executor)
    for _ in range(20):
        sched.tick()
        if store.get_job(None, job.id).has_ended:
            break
        time.sleep(0.01)
    ended = store.get_job(None, job.id)
    assert ended.state == SUCCEEDED, ended.state
    assert [attempts for _, attempts in executor.submitted] == [1, 2]  # counted in the store before each run
    assert {job_id for job_id, _ in executor.submitted} == {job.id}
    assert len(store.list_jobs("acme", page_size=100)[0]) == 1
    assert not any(j.state == RUNNING for j in store.list_jobs("acme", page_size=100)[0])
    assert any("retry 1" in (e.get("message") or "") for e in store.events("acme", job.id))
