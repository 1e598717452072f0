"""Tuning invariants on a tiny model: what LoRA may change, accumulation, merging, resume, determinism,
and the tuned model directory as a contract.

    .venv/bin/python -m pytest tests/unit/test_tuning.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunery.errors import DatasetError, JobError, TuningCancelled
from tunery.models.tuned import EPOCH_DIR
from tunery.tuning import Hooks, TuningSpec, merge, tune
from tunery.tuning.checkpoint import latest_checkpoint
from tunery.tuning.loop import fit

ADAPTER = "adapter_model.safetensors"
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
MANIFEST_FILES = {"tunery.json", "metrics.jsonl"}
EVALUATION_FILES = {"evaluation.json", "predictions.jsonl"}  # written when a validation file is given


def weights(path: Path, name: str = ADAPTER) -> dict[str, torch.Tensor]:
    return load_file(str(path / name))


def assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_close_weights(a, b, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)


def spec(train: Path, base: Path, output: Path, **kwargs) -> TuningSpec:
    return TuningSpec(train=str(train), base_model=str(base), output=str(output), **kwargs)


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def base_key(state: dict, name: str) -> str:
    """Where a base weight lives in a PEFT-wrapped model (``q_proj.weight`` → ``q_proj.base_layer.weight``)."""
    module, leaf = name.rsplit(".", 1)
    wrapped = f"{module}.base_layer.{leaf}"
    return wrapped if wrapped in state else name


@pytest.fixture(scope="module")
def train16(make_train) -> Path:
    return make_train(16)


@pytest.fixture(scope="module")
def train10(make_train) -> Path:
    return make_train(10)


# a. LoRA trains the adapter and nothing else --------------------------------------------------------


def test_lora_changes_adapters_and_leaves_base_weights_bit_identical(tiny_model, train16, tmp_path):
    from tunery.tuning import lora

    base = weights(tiny_model, "model.safetensors")
    base_bytes = (tiny_model / "model.safetensors").read_bytes()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_spec = spec(train16, tiny_model, run_dir, epochs=2, batch_size=4, learning_rate_multiplier=10)
    prep, run = lora.setup(run_spec, run_dir)

    adapters = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert all(not torch.any(p) for n, p in adapters.items() if ".lora_B." in n)  # B starts at zero
    # Every linear layer of every block has an adapter (target_modules="all-linear").
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len([n for n in adapters if ".lora_A." in n]) == 2 * len(projections)

    fit(run, Hooks())
    lora.save(prep, run)

    # In memory: every base weight is bit-identical; every adapter matrix moved.
    core = run.core.state_dict()
    assert len([k for k in core if ".base_layer." in k]) == len(adapters) // 2
    for name, tensor in base.items():
        assert torch.equal(core[base_key(core, name)], tensor), name
    for name, before in adapters.items():
        after = dict(run.model.named_parameters())[name]
        assert not torch.equal(after, before), name
    # On disk: the base is untouched, the adapter file holds adapters only, every lora_B is non-zero.
    assert (tiny_model / "model.safetensors").read_bytes() == base_bytes
    saved = weights(run_dir)
    assert len(saved) == len(adapters)
    assert all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert all(torch.any(v) for k, v in saved.items() if ".lora_B." in k)


def test_reloaded_adapter_sits_on_an_unchanged_base(tiny_model, tuned_lora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = weights(tiny_model, "model.safetensors")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(tuned_lora))
    state = model.get_base_model().state_dict()
    for name, tensor in base.items():
        assert torch.equal(state[base_key(state, name)], tensor), name
    saved = weights(tuned_lora)
    loaded = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert len(loaded) == len(saved)
    for name, tensor in saved.items():
        live = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[live], tensor), name


# b. Gradient accumulation does not change the result -----------------------------------------------


@pytest.mark.parametrize("method", ["lora", "full"])
def test_batch_8_equals_8_micro_batches_of_1(tiny_model, train16, tmp_path, method):
    file = ADAPTER if method == "lora" else "model.safetensors"
    # An fp32 statement: in bf16-mixed, matmul shapes change the rounding.
    common = {"method": method, "epochs": 2, "batch_size": 8, "learning_rate_multiplier": 10, "precision": "fp32"}
    whole = tune(spec(train16, tiny_model, tmp_path / "whole", micro_batch_tokens=1_000_000, **common))
    split = tune(spec(train16, tiny_model, tmp_path / "split", micro_batch_tokens=1, **common))
    a, b = weights(whole, file), weights(split, file)
    assert_close_weights(a, b, rtol=1e-5, atol=1e-6)
    # The losses logged per step agree too.
    for x, y in zip(metric_lines(whole), metric_lines(split), strict=True):
        assert x["step"] == y["step"]
        assert x.get("train_loss") == pytest.approx(y.get("train_loss"), rel=1e-5)
    # Control: the tolerance does tell runs apart (batch 4 is a different run).
    other = weights(tune(spec(train16, tiny_model, tmp_path / "b4", **{**common, "batch_size": 4})), file)
    assert any(not torch.allclose(a[k], other[k], rtol=1e-5, atol=1e-6) for k in a)


# c. A merged adapter gives the unmerged logits ------------------------------------------------------


def test_merged_adapter_gives_unmerged_logits(tiny_model, tuned_lora, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([list(range(5, 45)), list(range(100, 140))])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model)(input_ids=ids).logits
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(tuned_lora)).eval()
        unmerged = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
        out = merge(tuned_lora, tmp_path / "merged")
        standalone = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits

    assert (unmerged - base_logits).abs().max() > 1e-2  # the adapter matters: this is not vacuous
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(standalone, unmerged, rtol=0, atol=1e-5)
    manifest = json.loads((out / "tunery.json").read_text())
    assert manifest["tuningMode"] == "FULL" and manifest["mergedFrom"] == str(tuned_lora.resolve())
    assert {"model.safetensors", "config.json", *TOKENIZER_FILES, *MANIFEST_FILES} <= set(os.listdir(out))


def test_merge_refuses_full_weights_and_a_non_empty_output(tuned_lora, tuned_full, tmp_path):
    from tunery.errors import ModelError

    with pytest.raises(ModelError, match="no adapter to merge"):
        merge(tuned_full, tmp_path / "m1")
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "x").write_text("x")
    with pytest.raises(ModelError, match="not empty"):
        merge(tuned_lora, tmp_path / "m2")


# d. Resume after a kill or a cancel equals an uninterrupted run ------------------------------------


@pytest.fixture(scope="module")
def train150(make_train) -> Path:
    return make_train(150)


@pytest.fixture(scope="module")
def kill_spec(train150, tiny_model) -> dict:
    spec = {"train": str(train150), "base_model": str(tiny_model), "epochs": 2, "batch_size": 1, "adapter_size": 2}
    return {**spec, "auto_validation": False}  # all 150 examples train: 150 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted_150(kill_spec, tmp_path_factory) -> Path:
    return tune(TuningSpec(**kill_spec, output=str(tmp_path_factory.mktemp("uninterrupted") / "run")))


@pytest.mark.parametrize("steps_past_checkpoint", [0, 10])
def test_killed_run_resumes_to_the_uninterrupted_result(
    kill_spec, uninterrupted_150, tmp_path, tunery_home, repo_root, steps_past_checkpoint
):
    """SIGKILL a real tuning process as soon as its epoch-1 checkpoint appears, or ten steps later;
    resuming gives the uninterrupted run's weights and metrics."""
    run_dir = tmp_path / "killed"
    code = "import json, sys; from tunery.tuning import tune, TuningSpec; tune(TuningSpec(**json.loads(sys.argv[1])))"
    env = {**os.environ, "TUNERY_HOME": str(tunery_home), "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps({**kill_spec, "output": str(run_dir)})],
            cwd=repo_root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    metrics = run_dir / "metrics.jsonl"

    def logged_steps() -> int:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return len([line for line in lines if line.endswith("}")])

    deadline = time.monotonic() + 120
    try:
        # Wait for the epoch-1 checkpoint (and maybe more steps), then kill at once.
        while not ((run_dir / "checkpoints" / "latest").exists() and logged_steps() >= 150 + steps_past_checkpoint):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    assert not (run_dir / "tunery.json").exists()  # it died mid-run
    assert 150 + steps_past_checkpoint <= logged_steps() < 300  # any steps past the checkpoint get dropped
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == "step-000150"
    state = json.loads((checkpoint / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch"]) == (150, 1, 0)

    out = tune(TuningSpec(train=kill_spec["train"], output=str(run_dir)), resume=True)
    assert out == run_dir.resolve()
    assert_equal_weights(weights(out), weights(uninterrupted_150))
    resumed, reference = metric_lines(out), metric_lines(uninterrupted_150)
    assert [m["step"] for m in resumed] == list(range(1, 301))  # no step logged twice or lost
    assert [m["train_loss"] for m in resumed] == [m["train_loss"] for m in reference]
    assert not (out / "checkpoints").exists() and (out / "tunery.json").is_file()


@pytest.fixture(scope="module")
def uninterrupted_10(train10, tiny_model, tmp_path_factory):
    """``uninterrupted_10(method)``: a finished 2-epoch run on 10 examples, batch 2 (5 steps per epoch)."""
    runs: dict[str, Path] = {}

    def get(method: str = "lora") -> Path:
        if method not in runs:
            output = tmp_path_factory.mktemp(f"reference-{method}") / "run"
            runs[method] = tune(spec(train10, tiny_model, output, method=method, epochs=2, batch_size=2))
        return runs[method]

    return get


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cancelled_run_keeps_a_checkpoint_and_resumes_to_the_same_result(
    train10, tiny_model, uninterrupted_10, tmp_path, method
):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) == 8  # before step 8: 5 steps per epoch, so mid-epoch 2

    run_dir = tmp_path / "cancelled"
    run_spec = spec(train10, tiny_model, run_dir, method=method, epochs=2, batch_size=2)
    with pytest.raises(TuningCancelled) as caught:
        tune(run_spec, Hooks(should_stop=should_stop))
    checkpoint = Path(caught.value.checkpoint)
    assert checkpoint == latest_checkpoint(run_dir) and checkpoint.name == "step-000007"
    assert json.loads((checkpoint / "state.json").read_text())["batch"] == 2
    assert "step 7" in str(caught.value)
    assert not (run_dir / "tunery.json").exists()

    with pytest.raises(JobError, match="not empty"):  # a new run may not overwrite it
        tune(spec(train10, tiny_model, run_dir, method=method, epochs=2, batch_size=2))
    out = tune(TuningSpec(train="ignored-on-resume.jsonl", output=str(run_dir)), resume=True)
    file = ADAPTER if method == "lora" else "model.safetensors"
    assert_equal_weights(weights(out, file), weights(uninterrupted_10(method), file))
    assert [m["step"] for m in metric_lines(out)] == list(range(1, 11))


def test_timed_checkpoints_inside_an_epoch_let_a_crashed_run_resume_to_the_same_result(
    train10, tiny_model, uninterrupted_10, tmp_path
):
    class Crash(Exception):
        pass

    def crash_after_step_7(record: dict) -> None:
        if record["step"] == 7:
            raise Crash  # like a kill: no stop request, no checkpoint of its own

    run_dir = tmp_path / "crashed"
    run_spec = spec(train10, tiny_model, run_dir, epochs=2, batch_size=2)
    run_spec.checkpoint_seconds = 1e-9  # a checkpoint after every step
    with pytest.raises(Crash):
        tune(run_spec, Hooks(on_metrics=crash_after_step_7))
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == "step-000006"  # mid-epoch 2: only the timer wrote it
    out = tune(TuningSpec(train="ignored-on-resume.jsonl", output=str(run_dir)), resume=True)
    assert_equal_weights(weights(out), weights(uninterrupted_10("lora")))
    assert [m["step"] for m in metric_lines(out)] == list(range(1, 11))


def test_run_stopped_before_its_first_checkpoint_starts_over(train10, tiny_model, uninterrupted_10, tmp_path):
    run_dir = tmp_path / "early"
    calls: list[int] = []
    stop = Hooks(should_stop=lambda: calls.append(1) or len(calls) == 3)  # before step 3
    with pytest.raises(TuningCancelled):
        tune(spec(train10, tiny_model, run_dir, epochs=2, batch_size=2), stop)
    shutil.rmtree(run_dir / "checkpoints")  # as if killed before any checkpoint was written
    assert len(metric_lines(run_dir)) == 2
    out = tune(TuningSpec(train="ignored-on-resume.jsonl", output=str(run_dir)), resume=True)
    assert_equal_weights(weights(out), weights(uninterrupted_10("lora")))
    assert [m["step"] for m in metric_lines(out)] == list(range(1, 11))


def test_a_cancel_stops_the_run_between_micro_batches(train10, tiny_model, tmp_path):
    """A step of 4 examples in 4 micro-batches: a stop asked after its first micro-batch ends the run there (it is
    asked again before each next micro-batch), the step's partial gradients dropped, the checkpoint the last step's."""
    calls: list[int] = []
    stop = Hooks(should_stop=lambda: calls.append(1) or len(calls) == 6)  # step 1: 4 asks; step 2: top, then 1 in
    run_dir = tmp_path / "mid-step"
    with pytest.raises(TuningCancelled, match="cancelled at step 1") as caught:
        tune(spec(train10, tiny_model, run_dir, batch_size=4, micro_batch_tokens=1), stop)
    assert len(calls) == 6 and Path(caught.value.checkpoint).name == "step-000001"
    assert json.loads((Path(caught.value.checkpoint) / "state.json").read_text())["step"] == 1


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(JobError, match="run.json"):
        tune(TuningSpec(train="t.jsonl", output=str(tmp_path)), resume=True)


# e. Determinism ---------------------------------------------------------------------------------------


def test_same_seed_same_weights_other_seed_other_weights(train10, tiny_model, uninterrupted_10, tmp_path):
    reference_run = uninterrupted_10("lora")
    records: list[dict] = []
    hooks = Hooks(on_metrics=records.append)
    again = tune(spec(train10, tiny_model, tmp_path / "again", epochs=2, batch_size=2), hooks)
    assert_equal_weights(weights(again), weights(reference_run))
    assert records == metric_lines(again)  # the hook sees exactly what metrics.jsonl records
    assert metric_lines(again)[-1]["train_loss"] == metric_lines(reference_run)[-1]["train_loss"]
    other = weights(tune(spec(train10, tiny_model, tmp_path / "other", epochs=2, batch_size=2, seed=1)))
    reference = weights(reference_run)
    assert all(not torch.equal(other[k], reference[k]) for k in reference)


# f. The tuned model directory is a contract -----------------------------------------------------------


def test_lora_output_layout(tuned_lora, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    expected = {ADAPTER, "adapter_config.json", *TOKENIZER_FILES, *MANIFEST_FILES, *EVALUATION_FILES, EPOCH_DIR}
    assert set(os.listdir(tuned_lora)) == expected
    config = json.loads((tuned_lora / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model.resolve())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (8, 16, "LORA")
    shapes = {tuple(t.shape) for k, t in weights(tuned_lora).items() if ".lora_A." in k and ".q_proj." in k}
    assert shapes == {(8, 64)}  # rank adapterSize on hidden 64
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, str(tuned_lora))
    assert model.peft_config["default"].r == 8
    assert (tuned_lora / "chat_template.jinja").read_text() == (tiny_model / "chat_template.jinja").read_text()


def test_full_output_layout(tuned_full):
    from transformers import AutoModelForCausalLM

    assert set(os.listdir(tuned_full)) == {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        *TOKENIZER_FILES,
        *MANIFEST_FILES,
        *EVALUATION_FILES,
        EPOCH_DIR,
    }
    model = AutoModelForCausalLM.from_pretrained(tuned_full)
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize("which", ["tuned_lora", "tuned_full"])
def test_metrics_and_manifest(request, which, tiny_model):
    run = request.getfixturevalue(which)
    lines = metric_lines(run)
    # Step 0 is the base model's validation score; then one line per step (5 steps × 4 epochs).
    assert set(lines[0]) == {"step", "epoch", "eval_loss", "eval_token_accuracy", "eval_exact_match"}
    assert lines[0]["step"] == 0
    steps = lines[1:]
    assert [m["step"] for m in steps] == list(range(1, 21))
    step_keys = {"step", "epoch", "train_loss", "train_token_accuracy", "tokens_per_second", "eta_seconds"}
    for m in steps:
        assert step_keys <= set(m)
        assert 0 <= m["train_token_accuracy"] <= 1 and m["train_loss"] > 0 and m["tokens_per_second"] > 0
        at_epoch_end = m["step"] % 5 == 0
        assert m["epoch"] == pytest.approx(m["step"] / 5)
        assert ("eval_loss" in m) == at_epoch_end and ("eval_token_accuracy" in m) == at_epoch_end
        assert ("eval_exact_match" in m) == at_epoch_end
    assert steps[-1]["eta_seconds"] == 0
    assert steps[-1]["eval_loss"] < lines[0]["eval_loss"]  # it learned something

    manifest = json.loads((run / "tunery.json").read_text())
    assert {"baseModel", "hyperParameters", "tuningDataStats", "finalMetrics", "tuningMode", "spec"} <= set(manifest)
    assert manifest["baseModel"]["path"] == str(tiny_model.resolve())
    assert manifest["tuningMode"] == ("PEFT_ADAPTER" if which == "tuned_lora" else "FULL")
    hyper = manifest["hyperParameters"]
    assert (hyper["epochCount"], hyper["batchSize"], hyper["seed"]) == (4, 4, 0)
    assert hyper["adapterSize"] == (8 if which == "tuned_lora" else None)
    stats = manifest["tuningDataStats"]["supervisedTuningDataStats"]
    assert (stats["tuningDatasetExampleCount"], stats["tuningStepCount"]) == (20, 20)
    final = manifest["finalMetrics"]
    assert final["step"] == 20
    assert final["eval_loss"] == steps[-1]["eval_loss"] and final["train_loss"] == steps[-1]["train_loss"]
    assert manifest["spec"]["output"] == str(run)
    assert [c["step"] for c in manifest["checkpoints"]] == [5, 10, 15, 20]  # one per epoch
    assert manifest["bestCheckpoint"]["name"] in {c["name"] for c in manifest["checkpoints"]}
    assert manifest["validation"]["note"] == "validation: classify_openai.jsonl"
    assert manifest["defaults"]["reasons"]["epochs"] == "set"


# g. Bad data leaves nothing behind ------------------------------------------------------------------


def test_invalid_training_file_raises_and_leaves_no_output(data_dir, tiny_model, tmp_path, tunery_home):
    bad = data_dir / "bad" / "mixed.jsonl"
    with pytest.raises(DatasetError) as caught:
        tune(spec(bad, tiny_model, tmp_path / "out"))
    assert [(p.line, p.field) for p in caught.value.problems] == [
        (3, "line"),
        (5, "line"),
        (6, "contents[0].parts[0].text"),
        (6, "contents[1].role"),
        (8, "contents"),
        (9, "contents"),
    ]
    assert not (tmp_path / "out").exists()

    # Without --output, a run goes under $TUNERY_HOME/tuned-models; a rejected one leaves nothing there.
    parent = tunery_home / "tuned-models"
    before = set(parent.iterdir()) if parent.exists() else set()
    with pytest.raises(DatasetError):
        tune(TuningSpec(train=str(data_dir / "classify_gemini.jsonl"), validation=str(bad), base_model=str(tiny_model)))
    after = set(parent.iterdir()) if parent.exists() else set()
    assert after == before


# Precision ------------------------------------------------------------------------------------------


def test_bf16_mixed_keeps_fp32_weights_is_deterministic_and_close_to_fp32(tiny_model, train16, tmp_path):
    common = {"epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}
    first = tune(spec(train16, tiny_model, tmp_path / "bf16-a", precision="bf16-mixed", **common))
    second = tune(spec(train16, tiny_model, tmp_path / "bf16-b", precision="bf16-mixed", **common))
    fp32 = tune(spec(train16, tiny_model, tmp_path / "fp32", precision="fp32", **common))
    a, b, c = weights(first), weights(second), weights(fp32)
    assert all(t.dtype == torch.float32 for t in a.values())  # master weights stay fp32
    assert_equal_weights(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # bf16 matmuls really ran
    assert_close_weights(a, c, rtol=0.1, atol=0.02)
    manifest = json.loads((first / "tunery.json").read_text())
    assert manifest["hyperParameters"]["precision"] == "bf16-mixed"
    assert json.loads((fp32 / "tunery.json").read_text())["hyperParameters"]["precision"] == "fp32"


def test_auto_precision_resolves_to_what_the_hardware_does_fast(monkeypatch):
    from tunery.tuning import precision

    monkeypatch.setattr(precision, "has_fast_bf16", lambda: True)
    assert precision.resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(precision, "has_fast_bf16", lambda: False)
    assert precision.resolve_precision("auto") == "fp32"
    assert precision.resolve_precision("fp32") == "fp32"
