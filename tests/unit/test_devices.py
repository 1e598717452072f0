"""Devices, packing, checkpointing and the memory estimate: CPU tests on the tiny model, and ``gpu`` ones.

.venv/bin/python -m pytest tests/unit/test_devices.py -q
.venv/bin/python -m pytest tests/unit/test_devices.py -q -m gpu      # on a machine with CUDA
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunery.data.validation import read_examples
from tunery.errors import ConfigError
from tunery.models.loading import load_model
from tunery.tuning import TuningSpec, tune
from tunery.tuning.batching import collate
from tunery.tuning.devices import place, resolve_device
from tunery.tuning.losses import token_loss
from tunery.tuning.memory import parameter_counts
from tunery.tuning.packing import pack

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@pytest.fixture
def examples(tiny_model, tiny_tokenizer, make_train):
    report = read_examples(make_train(5, words=3), tokenizer=tiny_tokenizer(), max_length=1024)
    return report.encoded


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packing_gives_the_loss_and_gradients_of_padding(tiny_model, examples):
    """The same examples, padded or packed end to end: the same summed loss, trained tokens, correct count
    and gradients; each example's hidden states are those it has alone (no attention across examples)."""
    model = load_model(tiny_model, attn_implementation="sdpa")
    assert len({len(e.input_ids) for e in examples}) > 1  # padding is real
    padded, packed = collate(examples, pad_id=0), pack(examples)
    assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for e in examples))
    results = []
    for batch in (padded, packed):
        model.zero_grad()
        loss, (correct, count) = token_loss(model, batch)
        loss.backward()
        results.append((float(loss.detach()), correct, count, grads(model)))
    (loss_a, correct_a, count_a, grads_a), (loss_b, correct_b, count_b, grads_b) = results
    assert count_a == count_b == sum(e.trained_tokens for e in examples)
    assert correct_a == correct_b
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        decoder = model.get_decoder()
        together = decoder(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False)
        start = len(examples[0].input_ids)
        second = examples[1].input_ids
        alone = decoder(input_ids=torch.tensor([second]), use_cache=False).last_hidden_state
        torch.testing.assert_close(
            together.last_hidden_state[0, start : start + len(second)], alone[0], rtol=1e-4, atol=1e-5
        )


def test_packed_run_ends_with_the_padded_runs_weights(tiny_model, make_train, tmp_path):
    common = {"train": str(make_train(16, words=2)), "base_model": str(tiny_model), "epochs": 1, "precision": "fp32"}
    padded = tune(TuningSpec(**common, packing=False, output=str(tmp_path / "padded")))
    packed = tune(TuningSpec(**common, packing=True, output=str(tmp_path / "packed")))
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (padded, packed))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    assert json.loads((packed / "tunery.json").read_text())["spec"]["packing"] is True


def test_gradient_checkpointing_changes_memory_not_the_gradients(tiny_model, examples):
    batch = collate(examples, pad_id=0)
    results = []
    for checkpointing in (False, True):
        model = load_model(tiny_model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        loss, _ = token_loss(model, batch)
        loss.backward()
        results.append((float(loss.detach()), grads(model)))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_memory_estimate_refuses_a_run_that_cannot_fit(tiny_model, make_train, tmp_path, monkeypatch):
    """With 1 MiB allowed, the run is refused before any weight loads, naming the numbers; no directory stays."""
    monkeypatch.setenv("TUNERY_DEVICE_MEMORY", "1MiB")
    output = tmp_path / "refused"
    with pytest.raises(ConfigError) as info:
        tune(TuningSpec(train=str(make_train(8)), base_model=str(tiny_model), output=str(output)))
    message = str(info.value)
    for part in ("needs about", "weights", "gradients and optimizer", "activations", "tokens per micro-batch"):
        assert part in message
    assert "TUNERY_DEVICE_MEMORY is 0.00 GiB" in message
    assert not output.exists()
    monkeypatch.setenv("TUNERY_DEVICE_MEMORY", "8GiB")  # the same run fits in 8 GiB
    assert (
        tune(TuningSpec(train=str(make_train(8)), base_model=str(tiny_model), output=str(output))) / "tunery.json"
    ).is_file()


def test_parameter_counts_come_from_the_config_without_weights(tiny_model):
    model = load_model(tiny_model)
    total = sum(p.numel() for p in model.parameters())
    assert parameter_counts(tiny_model, None) == (total, total)
    with_lora, adapters = parameter_counts(tiny_model, 8)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()]
    assert adapters == sum(8 * (m.in_features + m.out_features) for m in linear) and with_lora == total + adapters


def test_device_and_compute_settings_are_checked():
    with pytest.raises(ConfigError) as info:
        TuningSpec(train="t.jsonl", device="gpu", processes=0, quantize="8bit")
    for part in ("device 'gpu'", "processCount 0", "quantize '8bit'"):
        assert part in str(info.value)
    with pytest.raises(ConfigError, match="cannot be tuned in full"):
        TuningSpec(train="t.jsonl", method="full", quantize="4bit")
    spec = TuningSpec(train="t.jsonl", device="cuda:1", processes=2, gradient_checkpointing=True)
    compute = spec.to_request()["supervisedTuningSpec"]["computeConfig"]
    assert compute == {"device": "cuda:1", "processCount": 2, "gradientCheckpointing": True}
    assert "computeConfig" not in TuningSpec(train="t.jsonl").to_request()["supervisedTuningSpec"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_without_a_gpu_is_refused_by_name():
    with pytest.raises(ConfigError, match="device cuda: no CUDA GPU is available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    placement = place(TuningSpec(train="t.jsonl"))
    assert (placement.device.type, placement.packing, placement.attention) == ("cpu", False, "sdpa")
    with pytest.raises(ConfigError, match="QLoRA needs a CUDA GPU"):
        place(TuningSpec(train="t.jsonl", device="cpu", quantize="4bit"))


# --- on a CUDA GPU ----------------------------------------------------------------------------------------


def gpu_spec(tiny_model: Path, make_train, tmp_path: Path, name: str, **kwargs) -> TuningSpec:
    return TuningSpec(
        train=str(make_train(16, words=2)),
        base_model=str(tiny_model),
        epochs=1,
        device="cuda",
        output=str(tmp_path / name),
        **kwargs,
    )


@pytest.mark.gpu
@cuda
def test_gpu_auto_is_bf16_packed_and_close_to_fp32(tiny_model, make_train, tmp_path):
    auto = tune(gpu_spec(tiny_model, make_train, tmp_path, "auto"))
    fp32 = tune(gpu_spec(tiny_model, make_train, tmp_path, "fp32", precision="fp32", packing=False))
    manifest = json.loads((auto / "tunery.json").read_text())
    assert manifest["hyperParameters"]["precision"] == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "fp32")
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (auto, fp32))
    for key in a:
        assert a[key].dtype == torch.float32
        torch.testing.assert_close(a[key], b[key], rtol=0.1, atol=5e-3, msg=key)


@pytest.mark.gpu
@cuda
def test_gpu_packing_matches_padding(tiny_model, examples):
    model = load_model(tiny_model, attn_implementation=place(TuningSpec(train="t", device="cuda")).attention).cuda()
    losses = []
    for batch in (collate(examples, pad_id=0), pack(examples)):
        loss, _ = token_loss(model, {k: v.cuda() for k, v in batch.items()})
        losses.append(float(loss))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.gpu
@cuda
def test_gpu_liger_kernels_apply_and_train(tiny_model, make_train, tmp_path):
    pytest.importorskip("liger_kernel")
    assert place(TuningSpec(train="t", device="cuda")).liger
    out = tune(gpu_spec(tiny_model, make_train, tmp_path, "liger"))
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.gpu
@cuda
def test_gpu_qlora_trains_fp32_adapters_on_an_nf4_base(tiny_model, make_train, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tune(gpu_spec(tiny_model, make_train, tmp_path, "qlora", quantize="4bit"))
    manifest = json.loads((out / "tunery.json").read_text())
    assert manifest["spec"]["quantize"] == "4bit" and manifest["hyperParameters"]["precision"] == "bf16-mixed"
    assert all(t.dtype == torch.float32 for t in load_file(str(out / "adapter_model.safetensors")).values())


@pytest.mark.gpu
@two_gpus
def test_two_gpus_end_with_the_weights_of_one(tiny_model, make_train, tmp_path):
    one = tune(gpu_spec(tiny_model, make_train, tmp_path, "one", precision="fp32", packing=False))
    two = tune(gpu_spec(tiny_model, make_train, tmp_path, "two", precision="fp32", packing=False, processes=2))
    a, b = (load_file(str(p / "adapter_model.safetensors")) for p in (one, two))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)


def test_rest_compute_config_names_every_compute_field_and_checks_types():
    """``computeConfig`` beside ``hyperParameters``: one REST field per ``COMPUTE_CONFIG`` entry, strict types."""
    from pydantic import ValidationError

    from tunery.api.schemas import ComputeConfig, CreateTuningJobRequest
    from tunery.tuning.spec import COMPUTE_CONFIG

    assert set(ComputeConfig.model_json_schema()["properties"]) == set(COMPUTE_CONFIG)
    body = {"supervisedTuningSpec": {"trainingDatasetUri": "files/x", "computeConfig": {"processCount": 2}}}
    parsed = CreateTuningJobRequest.model_validate(body).supervised_tuning_spec.compute_config
    assert parsed is not None and parsed.model_dump(by_alias=True)["processCount"] == 2
    bad = {"processCount": "2", "quantize": "8bit", "packing": "yes", "gpus": 1}
    with pytest.raises(ValidationError) as info:
        CreateTuningJobRequest.model_validate(
            {"supervisedTuningSpec": {"trainingDatasetUri": "x", "computeConfig": bad}}
        )
    fields = {".".join(map(str, e["loc"][-1:])) for e in info.value.errors()}
    assert fields == {"processCount", "quantize", "packing", "gpus"}
