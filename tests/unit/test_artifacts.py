"""``TUNERY_ARTIFACTS`` as an fsspec URL: a run directory mirrored to ``URL/<job id>`` checkpoint by checkpoint and
then as the tuned model, and copied back by a worker on a node that has none of it (``tunery.jobs.artifacts``)."""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import fsspec

from tunery.jobs import artifacts
from tunery.jobs.executor import LocalExecutor
from tunery.jobs.scheduler import Scheduler
from tunery.jobs.store import SUCCEEDED, Store, new_id
from tunery.settings import tuned_models_dir, tunery_home
from tunery.tuning.spec import TuningSpec


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def checkpoint(run: Path, step: int) -> None:
    """What ``save_checkpoint`` leaves: the new step's files, ``latest`` naming it, the older steps gone."""
    name = f"step-{step:06d}"
    write(run / "checkpoints" / name / "state.json", f'{{"step": {step}}}')
    write(run / "checkpoints" / name / "weights.safetensors", "w" * step)
    write(run / "checkpoints" / "latest", name)
    for old in (run / "checkpoints").glob("step-*"):
        if old.name != name:
            shutil.rmtree(old)
    write(run / "metrics.jsonl", "".join(f'{{"step": {s}}}\n' for s in range(1, step + 1)))


def tree(fs, root: str) -> dict[str, bytes]:
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in (q.rstrip("/") for q in fs.find(root))}


def local_tree(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_a_run_is_mirrored_checkpoint_by_checkpoint_then_as_the_tuned_model_and_read_back(tmp_path, monkeypatch):
    url = f"memory://tunery-{uuid.uuid4().hex}"
    monkeypatch.setenv("TUNERY_ARTIFACTS", url + "/")
    assert artifacts.artifacts_url() == url
    assert tuned_models_dir() == tunery_home() / "tuned-models"  # a URL is a copy: the runs stay local
    run = tmp_path / "run"
    mirror = artifacts.for_job("job1", run)
    fs, root = fsspec.core.url_to_fs(f"{url}/job1")
    assert mirror is not None and not mirror.push_checkpoint()  # no checkpoint yet: nothing copied
    write(run / "run.json", '{"spec": {}}')
    checkpoint(run, 2)
    write(run / "checkpoints" / ".step-000004-abc" / "weights.safetensors", "half written")
    assert mirror.push_checkpoint() and not mirror.push_checkpoint()  # the second: already there
    copied = tree(fs, root)
    assert set(copied) == {
        "run.json",
        "metrics.jsonl",
        "checkpoints/latest",
        "checkpoints/step-000002/state.json",
        "checkpoints/step-000002/weights.safetensors",
    }
    checkpoint(run, 4)
    assert mirror.push_checkpoint()
    copied = tree(fs, root)
    assert copied["checkpoints/latest"] == b"step-000004" and copied["metrics.jsonl"].count(b"\n") == 4
    assert not [p for p in copied if "step-000002" in p]  # the replaced checkpoint is gone from the copy too

    elsewhere = tmp_path / "other-node" / "run"  # a retry on a node without the run: copied back, then resumed
    back = artifacts.Mirror(elsewhere, f"{url}/job1")
    assert back.pull() and local_tree(elsewhere) == copied
    assert not back.pull() and not back.push_checkpoint()  # it has the run now; its checkpoint is the copy's
    assert not list(elsewhere.parent.glob(".*"))  # no staging folder left

    shutil.rmtree(run / "checkpoints")  # the end of a run: the tuned model's files only
    (run / "run.json").unlink()
    write(run / "tunery.json", '{"tuned": true}')
    write(run / "adapter_model.safetensors", "adapter")
    mirror.push()
    assert tree(fs, root) == local_tree(run)
    assert not fs.exists(f"{root}/checkpoints")
    fresh = artifacts.Mirror(tmp_path / "third" / "run", f"{url}/job1")
    assert fresh.pull() and (tmp_path / "third" / "run" / "tunery.json").read_text() == '{"tuned": true}'
    from tunery.api.generation import servable

    class Models:  # the store's tuned model row names a directory of the node the job ran on
        def get_tuned_model(self, tenant, model_id):
            return type("TunedModel", (), {"path": str(tmp_path / "gone" / model_id)})()

    served = servable("job1", "acme", Models())  # a server without the model copies it back from the URL
    assert served == str(tmp_path / "gone" / "job1") and local_tree(Path(served)) == local_tree(run)
    assert artifacts.local_copy(run, "job1") == str(run)  # here already: nothing copied
    monkeypatch.setenv("TUNERY_ARTIFACTS", str(tmp_path / "shared"))
    assert artifacts.for_job("job1", run) is None and tuned_models_dir() == tmp_path / "shared"


class RetryOnAnotherNode(LocalExecutor):
    """The local executor, except that a job's second worker starts where its run directory is not: deleted first."""

    def __init__(self) -> None:
        self.launches = 0

    def submit(self, job, store_url, *, watch_parent=False):
        self.launches += 1
        if self.launches == 2:
            shutil.rmtree(job.output)
        return super().submit(job, store_url, watch_parent=watch_parent)


def test_a_killed_job_resumes_from_the_url_copy_on_a_node_without_its_run(
    tmp_path, monkeypatch, tiny_model, make_train
):
    """Across processes with a ``file://`` URL: the worker copies each checkpoint there; killed, its retry starts
    where the run directory is missing, copies it back, resumes from the checkpoint, and the copy ends as the
    tuned model."""
    art = tmp_path / "artifacts"
    monkeypatch.setenv("TUNERY_ARTIFACTS", f"file://{art}")
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    job_id = new_id()
    spec = TuningSpec(train=str(make_train(20)), base_model=str(tiny_model), batch_size=2, epochs=4)
    spec.output = str(tuned_models_dir() / job_id)  # under $TUNERY_HOME: the URL is a copy
    request = {"supervisedTuningSpec": {"trainingDatasetUri": spec.train}}
    job, _ = store.create_job("acme", spec, request, job_id=job_id)
    executor = RetryOnAnotherNode()
    sched = Scheduler(store, 1, poll_seconds=0.1, executor=executor)
    sched.start()
    try:
        pointer = art / job.id / "checkpoints" / "latest"
        deadline = time.monotonic() + 120
        while not pointer.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pointer.is_file(), "no checkpoint copied to the URL"
        os.kill(store.get_job(None, job.id).worker_pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not store.get_job(None, job.id).has_ended and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sched.stop(timeout=30)
    ended = store.get_job(None, job.id)
    messages = [e.get("message") or "" for e in store.events(None, job.id)]
    assert ended.state == SUCCEEDED and ended.attempts == 2 and executor.launches == 2, (ended.error, messages)
    assert any(m.startswith("copied the run back from file://") for m in messages), messages
    assert sum("resuming from checkpoint step-" in m for m in messages) == 1, messages
    assert any(m.startswith("tuned model copied to file://") for m in messages), messages
    run = Path(ended.output)
    copy = local_tree(art / job.id)
    assert copy == local_tree(run) and "tunery.json" in copy and not any(p.startswith("checkpoints") for p in copy)
    store.close()
