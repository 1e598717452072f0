"""Serving on the real default model: adapters on one base against today's path (each merged, ``generate``).

.venv/bin/python -m pytest tests/integration/test_serving_real.py -q
"""

from __future__ import annotations

import json

import pytest
import torch

from tunery.data import user_example
from tunery.models import load_tokenizer, resolve_base
from tunery.models.loading import load_model
from tunery.serving import GenerationConfig
from tunery.serving.engine import Models, Row, run_rows

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"
QUESTIONS = ["Name three colours.", "Why do banks charge a fee abroad?", "Say hello."]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two random rank-4 LoRA adapters of the default model (tuned-model directories), and each one merged."""
    from peft import LoraConfig, get_peft_model

    base = resolve_base(MODEL)
    tokenizer = load_tokenizer(base.path)
    root = tmp_path_factory.mktemp("real-adapters")
    out = []
    for i in range(2):
        torch.manual_seed(i)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(load_model(base.path), config)
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data.mul_(0.3)
        path = root / f"adapter-{i}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        manifest = {"baseModel": {"id": MODEL, "path": str(base.path)}, "tuningMode": "PEFT_ADAPTER"}
        (path / "tunery.json").write_text(json.dumps(manifest))
        out.append((str(path), model.merge_and_unload().eval()))
    return out


def test_adapters_mixed_with_the_base_answer_as_each_merged_model_alone(adapters):
    models = Models(max_bases=1, max_adapters=4, weights="fp32")
    config = GenerationConfig(max_output_tokens=16)
    names = [MODEL] + [path for path, _ in adapters]
    rows = []
    for i, name in enumerate(names * 2):
        served = models.get(name)
        rows.append(Row(served, served.prompt(user_example(QUESTIONS[i // len(names)]), config), config))
    run_rows(rows)
    for row in rows[1:3] + rows[4:6]:
        merged = dict(adapters)[row.served.name]
        stop = row.served.stop_ids
        with torch.inference_mode():
            out = merged.generate(
                input_ids=torch.tensor([row.ids]),
                attention_mask=torch.ones(1, len(row.ids), dtype=torch.long),
                max_new_tokens=16,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=stop[0],
            )[0, len(row.ids) :].tolist()
        end = next((i + 1 for i, t in enumerate(out) if t in stop), len(out))
        assert row.out == out[:end], row.served.name
    assert rows[1].out != rows[0].out or rows[2].out != rows[0].out  # the adapters change the answer
