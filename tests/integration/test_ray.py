"""The Ray executor on a real local Ray cluster (a head and one worker node on loopback, started here):
a job runs to SUCCEEDED, and a job whose worker is killed mid-run resumes from its checkpoint to SUCCEEDED,
one job row, never left RUNNING. Skipped without Ray (``pip install 'tunery[ray]'``).

.venv/bin/python -m pytest tests/integration/test_ray.py -q
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")

from tunery.jobs.scheduler import Scheduler  # noqa: E402
from tunery.jobs.store import RUNNING, SUCCEEDED, Store  # noqa: E402
from tunery.tuning.spec import TuningSpec  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[str]:
    import ray

    temp = Path(f"/tmp/tr{os.getpid()}")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp}", *common],
        check=True,
        env=env,
        capture_output=True,
    )  # the head takes no jobs: they go to the worker node
    subprocess.run(
        [RAY, "start", f"--address={address}", "--num-cpus=1", *common[:1]],
        check=True,
        env=env,
        capture_output=True,
    )
    try:
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def store(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield opened
    opened.close()


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(0.1)
    return value


def worker_pids(job_id: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"tunery.jobs.worker" in cmd and job_id.encode() in cmd:
                found.append(int(proc.name))
    return found


def test_a_job_runs_on_the_cluster_and_a_killed_worker_resumes_from_its_checkpoint(
    cluster, store, tiny_model, make_train, tmp_path
):
    from tunery.jobs.ray_executor import RayExecutor

    spec = TuningSpec(
        train=str(make_train(40)), base_model=str(tiny_model), output=str(tmp_path / "out"), batch_size=2, epochs=10
    )
    job = store.create_job("acme", spec, {"supervisedTuningSpec": {"trainingDatasetUri": spec.train}})[0]
    sched = Scheduler(store, 1, poll_seconds=0.2, executor=RayExecutor(cluster))
    sched.start()
    try:
        steps = lambda: [e["data"]["step"] for e in store.events("acme", job.id) if e["type"] == "metrics"]  # noqa: E731
        wait_for(lambda: (tmp_path / "out" / "checkpoints" / "latest").exists() and steps(), what="a checkpoint")
        pids = wait_for(lambda: worker_pids(job.id), what="the worker on the node")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: store.get_job("acme", job.id).has_ended, timeout=180, what="the job's end")
    finally:
        sched.stop(timeout=30)
    ended = store.get_job("acme", job.id)
    assert ended.state == SUCCEEDED and ended.attempts == 2, (ended.state, ended.error)
    messages = [e.get("message") or "" for e in store.events("acme", job.id)]
    assert sum("resuming from checkpoint step-" in m for m in messages) == 1, messages
    assert any("retry 1" in m for m in messages), messages
    jobs = store.list_jobs("acme", page_size=100)[0]
    assert len(jobs) == 1 and not any(j.state == RUNNING for j in jobs)
    assert (tmp_path / "out" / "tunery.json").is_file()


def test_a_job_on_the_cluster_with_a_postgresql_store_succeeds(cluster, postgres_url, tiny_model, make_train, tmp_path):
    """The cluster's store: PostgreSQL. The scheduler and the worker on the Ray node both write to it (the worker's
    metrics and its end), and the job ends SUCCEEDED, run once."""
    from tunery.jobs.ray_executor import RayExecutor

    store = Store(postgres_url)
    assert store.engine.dialect.name == "postgresql"
    spec = TuningSpec(
        train=str(make_train(8)), base_model=str(tiny_model), output=str(tmp_path / "out"), batch_size=4, epochs=1
    )
    job = store.create_job("acme", spec, {"supervisedTuningSpec": {"trainingDatasetUri": spec.train}})[0]
    sched = Scheduler(store, 1, poll_seconds=0.2, executor=RayExecutor(cluster))
    sched.start()
    try:
        wait_for(lambda: store.get_job("acme", job.id).has_ended, timeout=180, what="the job's end")
    finally:
        sched.stop(timeout=30)
    ended = store.get_job("acme", job.id)
    assert ended.state == SUCCEEDED and ended.attempts == 1, (ended.state, ended.error)
    assert [e["data"]["step"] for e in store.events("acme", job.id) if e["type"] == "metrics"] == [1, 2]
    assert (tmp_path / "out" / "tunery.json").is_file()
    store.close()
