"""One job over two processes, for real: gloo on this CPU, helpers started by tunery, torchrun and accelerate
launch, FSDP sharding, a kill and a resume.

.venv/bin/python -m pytest tests/unit/test_distributed.py -q
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunery.errors import TuningCancelled
from tunery.tuning import Hooks, TuningSpec, tune
from tunery.tuning.checkpoint import latest_checkpoint
from tunery.tuning.distributed import KILL_ENV

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


def group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    alive.append(int(entry.name))
    return alive


def stop_after(step: int) -> Hooks:
    """Hooks that ask the run to stop once step ``step`` is done: it checkpoints there and raises."""
    phase = [""]
    return Hooks(should_stop=lambda: phase[0] == f"step {step}", on_phase=lambda name: phase.__setitem__(0, name))


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
    """A 2-process run whose process 0 is SIGKILLed right after step 3 (its epoch-1 checkpoint written: the
    test's kill point, ``TUNERY_TEST_KILL_AFTER_STEP``, not a race with a timer); its helper ends too, and
    resuming with one process ends at the uninterrupted one-process result."""
    spec = {**base_spec, "epochs": 3}
    reference = tune(TuningSpec(**spec, output=str(tmp_path / "reference")))
    run_dir = tmp_path / "killed"
    code = "import json, sys; from tunery.tuning import tune, TuningSpec; tune(TuningSpec(**json.loads(sys.argv[1])))"
    env = {**os.environ, "TUNERY_HOME": str(tunery_home), "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps({**spec, "processes": 2, "output": str(run_dir)})],
        cwd=repo_root,
        env={**env, KILL_ENV: "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the helper is found by it, and killed by it at the end
    )
    try:
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
        gone = time.monotonic() + 15
        while group_alive(proc.pid):
            assert time.monotonic() < gone, "the helper outlived process 0 by 15 s"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (run_dir / "tunery.json").exists()  # it died mid-run
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 3
    assert len(losses(run_dir)) == 3

    out = tune(TuningSpec(train=spec["train"], output=str(run_dir)), resume=True)
    assert json.loads((out / "tunery.json").read_text())["spec"]["processes"] == 1
    assert_close(reference, out, WEIGHTS["PEFT_ADAPTER"])
    assert losses(out) == pytest.approx(losses(reference), abs=1e-6)


def test_fsdp_full_tuning_ends_with_the_weights_of_one_and_resumes_with_any_count(base_spec, tmp_path):
    """FULL sharded over 2 gloo processes (FSDP): the one-process weights (fp32, within 1e-6; measured ~4e-9) and
    losses. Its checkpoints are the one-process format: a 1-process checkpoint resumes sharded, the sharded run's
    own (gathered) checkpoint resumes with 1 process, and the end is the uninterrupted result."""
    spec = {**base_spec, "method": "full", "epochs": 1}  # 3 steps
    reference = tune(TuningSpec(**spec, output=str(tmp_path / "one")))
    sharded = tune(TuningSpec(**spec, processes=2, fsdp=True, output=str(tmp_path / "fsdp")))
    assert json.loads((sharded / "tunery.json").read_text())["spec"]["fsdp"] is True
    assert_close(reference, sharded, WEIGHTS["FULL"])
    assert losses(sharded) == pytest.approx(losses(reference), abs=1e-6)

    cut = str(tmp_path / "cut")
    with pytest.raises(TuningCancelled):
        tune(TuningSpec(**spec, output=cut), stop_after(1))
    with pytest.raises(TuningCancelled):
        tune(TuningSpec(train=spec["train"], output=cut, processes=2, fsdp=True), stop_after(2), resume=True)
    checkpoint = latest_checkpoint(cut)
    assert checkpoint is not None and json.loads((checkpoint / "state.json").read_text())["step"] == 2
    out = tune(TuningSpec(train=spec["train"], output=cut), resume=True)
    assert_close(reference, out, WEIGHTS["FULL"])
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_runs_the_cli_as_one_sharded_job(base_spec, tmp_path, tunery_home, repo_root):
    """``accelerate launch --use_fsdp --num_processes 2 -m tunery tune --method full``: tunery reads accelerate's
    launcher environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, ACCELERATE_USE_FSDP), both processes
    train one sharded run, process 0 writes it, and the weights are the one-process weights. (On a machine without
    GPUs accelerate starts several processes only with --multi_gpu or --use_fsdp, or a MULTI_CPU config.)"""
    out = tmp_path / "accelerate"
    env = {**os.environ, "TUNERY_HOME": str(tunery_home), "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")  # no accelerate config of the user's
    options = ["--train", base_spec["train"], "--model", base_spec["base_model"], "--batch-size", "8"]
    options += ["--epochs", "1", "--precision", "fp32", "--device", "cpu", "--seed", "3", "--method", "full"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port())]
    # the CLI's micro-batches are the default 4096 tokens: one per step, so process 1 runs an uncounted pass
    spec = {**base_spec, "method": "full", "epochs": 1, "micro_batch_tokens": 4096}
    reference = tune(TuningSpec(**spec, output=str(tmp_path / "cli-one")))
    done = subprocess.run(
        [*launcher, "-m", "tunery", "tune", *options, "--output", str(out)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    manifest = json.loads((out / "tunery.json").read_text())
    assert (manifest["spec"]["processes"], manifest["spec"]["fsdp"]) == (2, True)
    assert_close(reference, out, WEIGHTS["FULL"])
    assert losses(out) == pytest.approx(losses(reference), abs=1e-6)


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
    """The helper SIGKILLed right after step 3 (its checkpoint written; ``TUNERY_TEST_KILL_AFTER_STEP=3:1``):
    process 0 exits with status 75 at the next step (not a job error: the scheduler retries such a worker)
    naming the lost peer, and the run resumes from its checkpoint to the end."""
    from tunery.tuning.distributed import EXIT_PROCESS_LOST

    spec = {**base_spec, "epochs": 8, "processes": 2, "output": str(tmp_path / "run")}
    code = "import json, sys; from tunery.tuning import tune, TuningSpec; tune(TuningSpec(**json.loads(sys.argv[1])))"
    env = {**os.environ, "TUNERY_HOME": str(tunery_home), "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        cwd=repo_root,
        env={**env, KILL_ENV: "3:1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    run_dir = tmp_path / "run"
    try:
        _, stderr = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_PROCESS_LOST, stderr.decode()[-2000:]
    assert b"lost a peer process of this run" in stderr
    assert not (run_dir / "tunery.json").exists()
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and json.loads((checkpoint / "state.json").read_text())["step"] == 3
    out = tune(TuningSpec(train=spec["train"], output=str(run_dir)), resume=True)
    assert json.loads((out / "tunery.json").read_text())["finalMetrics"]["step"] == 24


def test_the_memory_estimate_of_a_sharded_run_is_per_shard():
    """FSDP over 8 GPUs, a Llama-3.2-1B-shaped FULL run: each process holds 1/8 of the weights, gradients and
    optimizer state plus the embeddings and one decoder layer gathered whole (with their gradients); offloaded,
    only what is gathered. The whole run would not fit a 16 GiB GPU; a shard does."""
    from tunery.tuning.memory import GIB, estimate, per_shard

    config = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8}
    config |= {"intermediate_size": 8192, "vocab_size": 128256}
    n = 1_235_814_400
    whole = estimate(config, (n, n), 4096, 2048, weight_bytes=4, activation_bytes=3, checkpointing=True, cuda=True)
    gathered = 2 * 4 * (128256 * 2048 + 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192)
    shard = per_shard(whole, config, 8, offloaded=False)
    assert (shard.weights, shard.optimizer) == (whole.weights // 8 + gathered, whole.optimizer // 8)
    assert (shard.activations, shard.logits, shard.overhead) == (whole.activations, whole.logits, whole.overhead)
    assert whole.total > 16 * GIB > shard.total
    offloaded = per_shard(whole, config, 8, offloaded=True)
    assert (offloaded.weights, offloaded.optimizer) == (gathered, 0)


def test_fsdp_settings_are_checked(monkeypatch):
    """fsdp is for FULL; cpuOffload needs fsdp and a GPU; accelerate launch --use_fsdp shards FULL runs only."""
    from tunery.errors import ConfigError
    from tunery.tuning.distributed import sharding

    with pytest.raises(ConfigError, match="fsdp: sharding is for FULL tuning"):
        sharding(TuningSpec(train="t.jsonl", fsdp=True))
    with pytest.raises(ConfigError, match="cpuOffload: offloads FSDP shards; set fsdp too"):
        TuningSpec(train="t.jsonl", method="full", cpu_offload=True)
    with pytest.raises(ConfigError, match="cpuOffload: this run computes on the CPU"):
        sharding(TuningSpec(train="t.jsonl", method="full", fsdp=True, cpu_offload=True, device="cpu"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharding(TuningSpec(train="t.jsonl", method="full", device="cpu")) == (True, False)
    assert sharding(TuningSpec(train="t.jsonl", device="cpu")) == (False, False)  # LoRA: data parallel


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("offload", [False, True])
def test_fsdp_on_two_gpus_ends_with_the_weights_of_one(base_spec, tmp_path, offload):
    """FULL sharded over 2 GPUs (NCCL), its shards in GPU or CPU memory: the one-GPU weights (fp32)."""
    spec = {**base_spec, "method": "full", "epochs": 1, "device": "cuda", "packing": False}
    one = tune(TuningSpec(**spec, output=str(tmp_path / "one")))
    two = tune(TuningSpec(**spec, processes=2, fsdp=True, cpu_offload=offload, output=str(tmp_path / "two")))
    assert_close(one, two, WEIGHTS["FULL"], atol=1e-5)
