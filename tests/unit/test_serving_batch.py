"""Continuous batching and many adapters on one base, in process: the engine's ``Models``, ``Batch`` and ``Row``.

.venv/bin/python -m pytest tests/unit/test_serving_batch.py -q

The reference for every greedy answer is today's path: ``transformers``' ``generate`` on the tuned model
merged into its own copy of the base (``merge_and_unload``), one request at a time.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tunery.data import user_example
from tunery.models.tuned import load_tuned
from tunery.serving import GenerationConfig
from tunery.serving.engine import Batch, Engine, Models, Row, run_rows

QUESTIONS = ["my card never arrived", "hi", "why was my transfer declined yesterday?", "payment failed", "hello"]


@pytest.fixture(scope="module")
def adapters(tuned_lora, tmp_path_factory):
    """Four LoRA adapters of the tiny base: the tuned one and three copies with their weights moved apart."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("adapters")
    paths = [str(tuned_lora)]
    for n in range(3):
        path = root / f"adapter-{n}"
        shutil.copytree(tuned_lora, path)
        tensors = load_file(str(path / "adapter_model.safetensors"))
        generator = torch.Generator().manual_seed(n)
        moved = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in tensors.items()}
        save_file(moved, str(path / "adapter_model.safetensors"))
        paths.append(str(path))
    return paths


def _merged_answer(path: str, question: str, max_tokens: int) -> list[int]:
    """Today's path: the adapter merged into a copy of its base, ``generate`` greedy, one request."""
    engine = Engine(path)  # for its tokenizer, stop ids and prompt
    model, _ = load_tuned(path)
    model = model.merge_and_unload().eval()
    ids = engine.prompt(user_example(question), GenerationConfig(max_output_tokens=max_tokens))
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=engine.stop_ids,
        pad_token_id=engine.stop_ids[0],
    )[0, len(ids) :].tolist()
    end = next((i + 1 for i, t in enumerate(out) if t in engine.stop_ids), len(out))
    return out[:end]


def _row(models: Models, name: str, question: str, **config) -> Row:
    served = models.get(name)
    config = GenerationConfig(**{"max_output_tokens": 12, **config})
    return Row(served, served.prompt(user_example(question), config), config)


def test_mixed_adapters_and_the_base_in_one_batch_equal_each_merged_alone(adapters, tiny_model):
    models = Models(max_bases=1, max_adapters=8, weights="fp32")
    names = [*adapters, str(tiny_model)]
    rows = [_row(models, name, QUESTIONS[i % len(QUESTIONS)]) for i, name in enumerate(names * 2)]
    assert len({id(models.get(name).base) for name in names}) == 1  # one base in memory for all of them
    run_rows(rows)
    for i, row in enumerate(rows):
        name = names[i % len(names)]
        if name == str(tiny_model):
            continue
        assert row.out == _merged_answer(name, QUESTIONS[i % len(QUESTIONS)], 12), name
    answers = {tuple(row.out) for row in rows[: len(names)]}
    assert len(answers) > 1  # the adapters do answer differently


def test_a_request_that_joins_mid_batch_finishes_before_the_longest(tiny_model):
    models = Models(max_bases=1, weights="fp32")
    long = _row(models, str(tiny_model), QUESTIONS[0], max_output_tokens=60)
    batch = Batch(long.served.base)
    batch.add(long)
    for _ in range(10):
        batch.step()
    late = _row(models, str(tiny_model), QUESTIONS[2], max_output_tokens=5)
    batch.add(late)
    finished = []
    while batch.rows:
        finished += batch.step()
    assert finished == [late, long] and len(long.out) == 60
    alone = _row(models, str(tiny_model), QUESTIONS[2], max_output_tokens=5)
    run_rows([alone])
    assert late.out == alone.out  # joining a running batch (left-padded to its width) changed nothing


def test_seeded_sampled_rows_are_reproducible_in_any_company(tiny_model, adapters):
    models = Models(max_bases=1, weights="fp32")
    config = {"temperature": 1.3, "top_k": 50, "top_p": 0.95, "seed": 21}
    alone = _row(models, adapters[1], QUESTIONS[0], **config)
    run_rows([alone])
    crowd = [_row(models, str(tiny_model), q) for q in QUESTIONS] + [_row(models, adapters[1], QUESTIONS[0], **config)]
    run_rows(crowd)
    assert crowd[-1].out == alone.out
    other = _row(models, adapters[1], QUESTIONS[0], **{**config, "seed": 22})
    run_rows([other])
    assert other.out != alone.out


def test_adapters_are_kept_least_recently_used_and_reload_with_the_same_answers(adapters):
    models = Models(max_bases=1, max_adapters=2, weights="fp32")
    first = [_row(models, name, QUESTIONS[0]) for name in adapters]
    for row in first:  # one at a time: at most 2 slots, so later adapters push out earlier ones
        run_rows([row])
    base = models.get(adapters[0]).base
    assert list(base.adapters) == adapters[-2:]
    again = [_row(models, name, QUESTIONS[0]) for name in adapters]
    for row in again:
        run_rows([row])
    assert [r.out for r in again] == [r.out for r in first]
    assert models.evict(adapters[-1]) and not models.evict(adapters[-1])
    assert adapters[-1] not in base.adapters


def test_a_removed_row_frees_its_place_and_the_others_go_on(tiny_model, adapters):
    models = Models(max_bases=1, weights="fp32")
    rows = [_row(models, name, QUESTIONS[1], max_output_tokens=20) for name in (str(tiny_model), adapters[0])]
    keep = _row(models, adapters[2], QUESTIONS[3], max_output_tokens=20)
    batch = Batch(rows[0].served.base)
    for row in [*rows, keep]:
        row.slot = row.served.slot()
        batch.add(row)
    batch.step()
    batch.remove(rows)
    assert batch.rows == [keep] and batch.mask.shape[0] == 1 and batch.base.in_use[rows[1].slot] == 0
    while batch.rows:
        batch.step()
    alone = _row(models, adapters[2], QUESTIONS[3], max_output_tokens=20)
    run_rows([alone])
    assert keep.out == alone.out


def test_streamed_text_joins_to_the_answer(tuned_lora):
    models = Models(max_bases=1, weights="fp32")
    for config in ({"max_output_tokens": 20}, {"max_output_tokens": 20, "stop_sequences": ("_",)}):
        chunks: list[str] = []
        row = _row(models, str(tuned_lora), QUESTIONS[0], **config)
        row.on_text = chunks.append
        run_rows([row])
        assert "".join(chunks) == row.text and row.text
        assert len(chunks) >= 1


@pytest.mark.parametrize("weights", ["bf16", "int8", "int4"])
def test_faster_weights_answer_like_fp32_on_the_tuned_model(tuned_lora, weights):
    from tunery.hardware import cpu_has_fast_bf16
    from tunery.serving.quantized import int4_kernel_works, int8_kernel_works

    if weights == "int8" and not (cpu_has_fast_bf16() and int8_kernel_works()):
        pytest.skip("no int8 kernel for this CPU (needs AVX512-BF16 or AMX)")
    if weights == "int4" and not int4_kernel_works():
        pytest.skip("no CPU int4 kernel in this torch")
    reference, fast = Engine(tuned_lora), Engine(tuned_lora, weights=weights)
    labels = {json.dumps(reference.generate(user_example(q)).text) for q in QUESTIONS}
    fast_labels = {json.dumps(fast.generate(user_example(q)).text) for q in QUESTIONS}
    assert fast_labels == labels  # a tuned classifier's answers survive the rounding


def test_int4_keeps_the_grid_the_weights_lie_on():
    """A layer on Q4_1's grid (16 levels between each 32-group's minimum and maximum) is held as those 4 bits, one
    on Q8_0's (-127..127 times a 32-group scale) as two 4-bit halves, any other as int8; each multiplies as the
    fp32 layer does up to bf16's rounding of the activations and scales."""
    from torch import nn

    from tunery.serving.quantized import Int4Linear, Int8Linear, int4_kernel_works, prepare_weights

    if not int4_kernel_works():
        pytest.skip("no CPU int4 kernel in this torch")
    torch.manual_seed(0)
    out, width = 48, 96
    groups = (out, width // 32, 32)
    low, step = torch.randn(out, width // 32, 1) * 0.1, torch.rand(out, width // 32, 1) * 0.02 + 0.001
    levels = torch.randint(0, 16, groups).float()
    levels[..., 0], levels[..., 1] = 0, 15  # as a Q4_1 quantizer writes them: the group's ends are levels 0 and 15
    q4_1 = (levels * step + low).reshape(out, width)
    levels8 = torch.randint(-127, 128, groups).float()
    levels8[..., 0] = -127  # as a Q8_0 quantizer writes them: the group's largest magnitude is level 127
    q8_0 = (levels8 * step).reshape(out, width)
    model = nn.Sequential(nn.Linear(width, out, bias=False), nn.Linear(width, out), nn.Linear(width, out, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(q4_1)
        model[1].weight.copy_(q8_0)
    x = torch.randn(5, width)
    reference = [layer(x) for layer in model]
    prepare_weights(model, "int4")
    assert isinstance(model[0], Int4Linear) and model[0].halves == 1
    assert isinstance(model[1], Int4Linear) and model[1].halves == 2
    assert isinstance(model[2], Int8Linear)  # random weights lie on no grid
    for layer, expected in zip(model, reference, strict=True):
        got = layer(x).float()
        assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    # bf16 activations alone err as much: the grid itself is kept exactly
    exact = x.bfloat16().float() @ q4_1.T
    assert (model[0](x).float() - exact).abs().max() <= 0.01 * exact.abs().max()


def test_an_adapter_is_served_on_int4_weights():
    """The default model's layers are on Q4_1's grid, so the host holds them as Int4Linear: an adapter's slot goes
    on those as on any linear layer, and a row with it gets the fp32 model's delta on top."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunery.serving.engine import Base, MultiLoraLinear
    from tunery.serving.quantized import Int4Linear, int4_kernel_works

    if not int4_kernel_works():
        pytest.skip("no CPU int4 kernel in this torch")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # snap every linear weight onto a 4-bit, 32-group grid, as a Q4_1 file holds them
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                groups = module.weight.reshape(module.out_features, -1, 32)
                low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
                step = (high - low) / 15
                module.weight.copy_((((groups - low) / step).round() * step + low).reshape(module.weight.shape))
    name = "model.layers.0.self_attn.q_proj"
    reference = model.get_submodule(name)
    a, b = torch.randn(4, 64) * 0.1, torch.randn(64, 4) * 0.1
    x = torch.randn(2, 3, 64)
    expected = reference(x) + x @ a.T @ b.T
    base = Base("tiny-int4", weights="int4", model=model, lean=False)  # the transformers path (test_decoder: lean)
    assert isinstance(base.model.get_submodule(name), Int4Linear)
    lora = base._lora_module(name)
    assert isinstance(lora, MultiLoraLinear)
    lora.set(1, a, b)
    base.selection.select(torch.tensor([1, 0]))
    got = lora(x.bfloat16()).float()
    base.selection.select(None)
    assert (got[0] - expected[0]).abs().max() <= 0.02 * expected[0].abs().max()  # the adapter's row
    assert (got[1] - reference(x)[1]).abs().max() <= 0.02 * reference(x)[1].abs().max()  # the base's row
