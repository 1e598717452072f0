"""The real shipped models, end to end: few and deliberate (each converts a GGUF once per session)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from tunery.data import encode, read_examples
from tunery.data.formats import user_example
from tunery.demo import dataset_paths
from tunery.models import load_tokenizer, resolve_base
from tunery.serving import Engine, GenerationConfig
from tunery.tuning import TuningSpec, tune

pytestmark = pytest.mark.integration


def head(path: Path, n: int, out: Path) -> Path:
    out.write_text("\n".join(path.read_text().splitlines()[:n]) + "\n")
    return out


@pytest.fixture(scope="module")
def smollm():
    return resolve_base("smollm2-135m-instruct")


def test_conversion_is_cached(smollm):
    weights = smollm.path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    again = resolve_base("smollm2-135m-instruct")
    assert time.perf_counter() - started < 2
    assert again.path == smollm.path and weights.stat().st_mtime_ns == before
    assert len(smollm.sha256) == 64
    config = json.loads((smollm.path / "config.json").read_text())
    assert "quantization_config" not in config


def test_a_fresh_host_warms_and_checks_at_once(smollm, tmp_path):
    """A restarted checker loads its tokenizer (the warm-up, on the loader thread) while the first upload's check
    runs (on the pool): both first touch transformers' lazy AutoTokenizer. Before the host imported it once up
    front, one of the two failed with 'cannot import name AutoTokenizer' in about half of such starts (a 500 on the
    upload, found by benchmarks/soak.py; 3 of 6 here)."""
    from tunery.serving.process import ModelHost

    train = dataset_paths()[0]
    for attempt in range(2):
        with ModelHost(timeout=120, log_path=tmp_path / f"host-{attempt}.log") as fresh:
            fresh.warm(tokenizers=[smollm.id])
            time.sleep(0.3 * attempt)
            assert fresh.validate(train, smollm.id, 1024, 8)["exampleCount"] == 240
            deadline = time.monotonic() + 60
            while fresh.readiness not in ("ready",) and not fresh.readiness.startswith("failed"):
                assert time.monotonic() < deadline, fresh.readiness
                time.sleep(0.1)
            assert fresh.readiness == "ready", fresh.readiness
        assert "Traceback" not in (tmp_path / f"host-{attempt}.log").read_text()


def test_short_lora_run_lowers_validation_loss_and_reloads_with_plain_peft(smollm, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train_path, test_path = dataset_paths()
    train = head(train_path, 48, tmp_path / "train.jsonl")
    validation = head(test_path, 16, tmp_path / "validation.jsonl")
    out = tune(TuningSpec(train=str(train), validation=str(validation), epochs=2, output=str(tmp_path / "tuned")))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert len(evals) == 3 and evals[-1] < evals[0] * 0.5, evals

    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(smollm.path)
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    plain = PeftModel.from_pretrained(base, str(out)).eval()
    engine = Engine(out)
    tokenizer = load_tokenizer(out)
    ids = torch.tensor([encode(tokenizer, read_examples(validation).examples[0], 512).input_ids])
    with torch.no_grad():
        # 30 fp32 layers, PEFT vs the served adapter slot: differences up to ~2e-4 on logits of order 10 (seen here).
        torch.testing.assert_close(plain(ids).logits, engine.logits(ids), atol=1e-3, rtol=1e-3)
    answer = engine.generate(
        user_example("I left my wallet in a taxi last night", "Route the ticket."),
        GenerationConfig(max_output_tokens=12),
    )
    assert answer.finish_reason == "STOP" and answer.text


def test_demo_data_is_valid_for_the_default_model(smollm):
    tokenizer = load_tokenizer(smollm.path)
    for path in dataset_paths():
        report = read_examples(path, tokenizer=tokenizer)
        assert report.ok and not report.warnings
        trained = [tokenizer.decode([t for t in e.labels if t != -100]) for e in report.encoded]
        assert all(text.endswith("<|im_end|>") for text in trained)


def test_gemma_gets_its_turn_format_and_stops_at_end_of_turn():
    base = resolve_base("gemma-3-270m")
    tokenizer = load_tokenizer(base.path)
    report = read_examples(dataset_paths()[0], tokenizer=tokenizer, model_id=base.id)
    assert report.ok
    example, encoded = report.examples[0], report.encoded[0]
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    trained = tokenizer.decode([t for t in encoded.labels if t != -100])
    assert trained == example.target + "<end_of_turn>"
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("<bos><start_of_turn>user\nRoute the ticket.\n\n")
    engine = Engine("gemma-3-270m")
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in engine.stop_ids
    result = engine.generate(user_example("Say hello."), GenerationConfig(max_output_tokens=4))
    assert result.output_tokens <= 4 and result.prompt_tokens == engine.count_tokens(user_example("Say hello."))


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_a_batch_answers_as_each_prompt_alone_on_the_real_models(model):
    engine = Engine(model)
    prompts = [
        user_example("Name three colours."),
        user_example("In one sentence, why do banks charge a fee when a card is used abroad in another currency?"),
        user_example("Say hello."),
    ]
    configs = [GenerationConfig(max_output_tokens=n) for n in (24, 16, 8)]
    alone = [engine.generate(p, c) for p, c in zip(prompts, configs, strict=True)]
    batched = engine.generate_batch([engine.prompt(p, c) for p, c in zip(prompts, configs, strict=True)], configs)
    assert [(g.text, g.output_tokens, g.finish_reason) for g in batched] == [
        (g.text, g.output_tokens, g.finish_reason) for g in alone
    ]
    assert all(g.text for g in alone)
