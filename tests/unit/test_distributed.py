"""One job over two processes, for real: gloo on this CPU, helpers started by tunery, a kill and a resume.

.venv/bin/python -m pytest tests/unit/test_distributed.py -q
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunery.tuning import TuningSpec, tune
from tunery.tuning.checkpoint import latest_checkpoint

WEIGHTS = {"PEFT_ADAPTER": "adapter_model.safetensors", "FULL": "model.safetensors"}


def assert_close(a: Path, b: Path, name: str, atol: float = 1e-6) -> None:
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=atol, msg=key)


def stat(pid: int) -> str:
    """The process state letter of ``pid`` (``Z`` for a zombie), or ``Z`` once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines if "train_loss" in json.loads(line)]


@pytest.fixture
def base_spec(tiny_model, make_train) -> dict:
    # Small micro-batches: every step of 8 examples splits into several, so both processes share each step.
    return {
        "train": str(make_train(24)),
        "base_model": str(tiny_model),
        "batch_size": 8,
        "epochs": 2,
        "precision": "fp32",
        "device": "cpu",
        "micro_batch_tokens": 64,
        "seed": 3,
    }


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_end_with_the_weights_of_one(base_spec, tmp_path, method):
    """2 processes over gloo, the same global batch: the one-process weights (fp32, within 1e-6) and losses."""
    one = tune(TuningSpec(**base_spec, method=method, output=str(tmp_path / "one")))
    two = tune(TuningSpec(**base_spec, method=method, processes=2, output=str(tmp_path / "two")))
    manifest = json.loads((two / "tunery.json").read_text())
    assert manifest["spec"]["processes"] == 2
    assert_close(one, two, WEIGHTS[manifest["tuningMode"]])
    assert losses(one) == pytest.approx(losses(two), abs=1e-6)
    assert len(losses(two)) == 6  # 3 steps per epoch, 2 epochs: the global batch did not change
    assert not (two / "checkpoints").exists()


def test_killed_with_two_processes_resumes_with_one(base_spec, tmp_path, tunery_home, repo_root):
    """SIGKILL a 2-process run (both processes) once its epoch-1 checkpoint exists; resuming it with one
    process ends at the uninterrupted one-process result."""
    spec = {**base_spec, "epochs": 3}
    reference = tune(TuningSpec(**spec, output=str(tmp_path / "reference")))
    run_dir = tmp_path / "killed"
    code = "import json, sys; from tunery.tuning import tune, TuningSpec; tune(TuningSpec(**json.loads(sys.argv[1])))"
    env = {**os.environ, "TUNERY_HOME": str(tunery_home), "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps({**spec, "processes": 2, "output": str(run_dir)})],
            cwd=repo_root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: the kill takes the helper too
        )
    deadline = time.monotonic() + 180
    try:
        while not (run_dir / "checkpoints" / "latest").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.002)
        helpers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(helpers) == 1
        proc.send_signal(signal.SIGKILL)  # process 0 only: its helper sees its parent gone and ends too
        proc.wait()
        gone = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() and "Z" not in stat(pid) for pid in helpers):
            assert time.monotonic() < gone, "the helper outlived process 0 by 15 s"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "tunery.json").exists()  # it died mid-run
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] >= 1

    out = tune(TuningSpec(train=spec["train"], output=str(run_dir)), resume=True)
    assert json.loads((out / "tunery.json").read_text())["spec"]["processes"] == 1
    assert_close(reference, out, WEIGHTS["PEFT_ADAPTER"])
    assert losses(out) == pytest.approx(losses(reference), abs=1e-6)


def test_torchrun_runs_the_cli_as_one_job(base_spec, tmp_path, tunery_home, repo_root):
    """``torchrun --nproc-per-node 2 -m tunery tune``: process 0 writes the tuned model, both train it, and the
    weights are the one-process weights."""
    out = tmp_path / "torchrun"
    env = {**os.environ, "TUNERY_HOME": str(tunery_home), "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    options = ["--train", base_spec["train"], "--model", base_spec["base_model"], "--batch-size", "8"]
    options += ["--epochs", "2", "--precision", "fp32", "--device", "cpu", "--seed", "3", "--output", str(out)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    # micro_batch_tokens is not a CLI option: the one-process reference uses its default (4096) too
    reference = tune(TuningSpec(**{**base_spec, "micro_batch_tokens": 4096}, output=str(tmp_path / "cli-one")))
    done = subprocess.run(
        [*launcher, "-m", "tunery", "tune", *options], cwd=repo_root, env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    manifest = json.loads((out / "tunery.json").read_text())
    assert manifest["spec"]["processes"] == 2
    assert_close(reference, out, WEIGHTS["PEFT_ADAPTER"])


def test_a_job_with_two_processes_runs_through_the_worker_and_cancels_everywhere(base_spec, tmp_path):
    """An embedded job (the SDK's path: store, detached worker) with processCount 2 ends SUCCEEDED with the
    one-process weights; a cancelled one ends CANCELLED with its helper process gone."""
    from tunery.jobs import CANCELLED, ENDED, SUCCEEDED, Store, local

    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    reference = tune(TuningSpec(**base_spec, output=str(tmp_path / "one")))
    job = local.submit(TuningSpec(**base_spec, processes=2, output=str(tmp_path / "two")), store)
    job_id = job["name"].split("/")[-1]
    deadline = time.monotonic() + 240
    while local.read(job_id, store)["state"] not in ENDED:
        assert time.monotonic() < deadline, "the job did not end within 240 s"
        time.sleep(0.2)
    assert local.read(job_id, store)["state"] == SUCCEEDED, local.read(job_id, store)
    assert_close(reference, tmp_path / "two", WEIGHTS["PEFT_ADAPTER"])

    long = {**base_spec, "epochs": 50}
    job = local.submit(TuningSpec(**long, processes=2, output=str(tmp_path / "cancelled")), store)
    job_id = job["name"].split("/")[-1]
    worker = store.get_job(None, job_id).worker_pid
    while not (tmp_path / "cancelled" / "metrics.jsonl").is_file() or not losses(tmp_path / "cancelled"):
        assert time.monotonic() < deadline + 240, "no step within the time allowed"
        time.sleep(0.1)
    helpers = [int(pid) for pid in Path(f"/proc/{worker}/task/{worker}/children").read_text().split()]
    local.cancel(job_id, store)
    while local.read(job_id, store)["state"] not in ENDED:
        assert time.monotonic() < deadline + 360, "the cancel did not end the job"
        time.sleep(0.2)
    assert local.read(job_id, store)["state"] == CANCELLED, local.read(job_id, store)
    store.close()
    gone = time.monotonic() + 30
    while any(stat(pid) != "Z" for pid in helpers):
        assert time.monotonic() < gone, "a helper process outlived the cancelled job"
        time.sleep(0.1)


def test_a_lost_helper_fails_the_step_and_the_run_resumes(base_spec, tmp_path, tunery_home, repo_root):
    """SIGKILL the helper mid-run: process 0 exits with status 75 (not a job error: the scheduler retries
    such a worker) naming the lost peer, and the run resumes from its checkpoint to the end."""
    from tunery.tuning.distributed import EXIT_PROCESS_LOST

    spec = {**base_spec, "epochs": 8, "processes": 2, "output": str(tmp_path / "run")}
    code = "import json, sys; from tunery.tuning import tune, TuningSpec; tune(TuningSpec(**json.loads(sys.argv[1])))"
    env = {**os.environ, "TUNERY_HOME": str(tunery_home), "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        cwd=repo_root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 180
    try:
        while not (run_dir / "checkpoints" / "latest").exists():
            assert proc.poll() is None
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.005)
        helper = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        os.kill(helper, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_PROCESS_LOST, stderr.decode()[-2000:]
    assert b"lost a peer process of this run" in stderr
    assert not (run_dir / "tunery.json").exists()
    out = tune(TuningSpec(train=spec["train"], output=str(run_dir)), resume=True)
    assert json.loads((out / "tunery.json").read_text())["finalMetrics"]["step"] == 24
