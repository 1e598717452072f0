"""The lean decode forward (tunery.serving.decoder): the same numbers as transformers' forward in fp32, for
every position, through continuous batching and with mixed adapters; its int8 adapter stacks close to fp32's;
models it does not run fall back to transformers."""

from __future__ import annotations

import pytest
import torch

from tunery.serving import decoder
from tunery.serving.engine import Base, Batch, Row, Served, on_own_thread
from tunery.serving.gemini import GenerationConfig


def _llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)  # fmt: skip
    settings.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256)  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # q/k/v biases are zero at init: make them count
        for layer in model.model.layers:
            for name in ("q_proj", "k_proj", "v_proj"):
                getattr(layer.self_attn, name).bias.normal_(0, 0.5)
    return model


def _adapter(model, rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random LoRA A [r, in] and (scaled) B [out, r] for every linear layer of ``model``'s decoder layers (as a
    PEFT adapter names them: q_proj, ..., down_proj)."""
    torch.manual_seed(seed)
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            layers[name] = (torch.randn(rank, module.in_features) * 0.2, torch.randn(module.out_features, rank) * 0.2)
    return layers


def _pair(make, **kw):
    """The transformers path and the lean path on copies of one fp32 model."""
    return Base("reference", model=make(**kw), lean=False), Base("lean", model=make(**kw), lean=True)


@pytest.mark.parametrize("make", [_llama, lambda: _llama(tie_word_embeddings=True, num_key_value_heads=4), _qwen2])
def test_fp32_logits_equal_transformers_at_every_position(make):
    reference, lean = _pair(make)
    assert reference.decoder is None and lean.decoder is not None
    ids = torch.randint(0, 96, (3, 17))
    with torch.inference_mode():
        expected = reference.model(input_ids=ids).logits
    got = lean.decoder.forward(ids, None, torch.arange(17)[None].expand(3, 17), None, None, every_position=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _served(base: Base) -> Served:
    class Tokens:  # decode() is all a row needs of a tokenizer here
        eos_token_id = 95

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    return Served("m", base, None, Tokens(), [95], None, 256)


def _decode(base: Base, prompts: list[list[int]], slots: list[int], tokens: int = 12) -> list[list[int]]:
    """Greedy answers through one continuous batch: rows join one after another, mid-decode."""
    served = _served(base)
    rows = [Row(served, ids, GenerationConfig(max_output_tokens=tokens)) for ids in prompts]
    batch = Batch(base)
    for row, slot in zip(rows, slots, strict=True):
        row.slot = slot
        batch.add(row)
        batch.step()
        batch.step()
    while batch.rows:
        batch.step()
    return [row.out for row in rows]


def test_continuous_batch_with_mixed_adapters_equals_transformers():
    """Rows of different lengths (left-padded), joining mid-batch, on two adapters and the base: the lean path
    gives each row the tokens and the transformers path gives it (fp32, greedy), and adapters change answers."""
    reference, lean = _pair(_llama)
    for base in (reference, lean):
        for slot, seed in ((1, 5), (2, 6)):
            for name, (a, b) in _adapter(_llama(), rank=4 if slot == 1 else 2, seed=seed).items():
                base._set(name, slot, a, b)
    torch.manual_seed(3)
    prompts = [torch.randint(0, 95, (n,)).tolist() for n in (5, 11, 3, 8)]
    slots = [1, 0, 2, 1]
    expected = _decode(reference, prompts, slots)
    assert _decode(lean, prompts, slots) == expected
    assert _decode(lean, prompts, [0, 0, 0, 0]) != expected
    # one adapter for every row (the path that reads only its matrices) equals the mixed path's answers
    ones = _decode(lean, prompts, [1, 1, 1, 1])
    assert [ones[0], ones[3]] == [expected[0], expected[3]]


def test_a_cleared_slot_serves_the_base_again():
    _, lean = _pair(_llama)
    prompts = [[1, 2, 3, 4]]
    plain = _decode(lean, prompts, [0])
    for name, (a, b) in _adapter(_llama(), rank=4, seed=5).items():
        lean._set(name, 1, a, b)
    assert _decode(lean, prompts, [1]) != plain
    lean._clear(1)
    assert _decode(lean, prompts, [1]) == plain


def test_the_cache_grows_past_its_buffer(monkeypatch):
    monkeypatch.setattr(decoder, "_CHUNK", 4)
    reference, lean = _pair(_llama)
    prompts = [[7, 8, 9], [10, 11, 12, 13, 14, 15]]
    assert _decode(lean, prompts, [0, 0], tokens=30) == _decode(reference, prompts, [0, 0], tokens=30)


def test_int8_adapter_stacks_are_close_to_fp32():
    """With bf16 activations the stacks are int8 (B's rows scaled to one size first): each row's delta stays
    within a few percent of the fp32 stack's, for adapters of very different sizes side by side."""
    parts = [("q_proj", 64), ("k_proj", 32), ("v_proj", 32)]
    exact, quantized = decoder.LoraStack(4, parts, 64), decoder.LoraStack(4, parts, 64, quantized=True)
    torch.manual_seed(0)
    for slot, size in ((1, 1.0), (2, 0.01), (3, 30.0)):
        for name, width in parts:
            a, b = torch.randn(8, 64) * 0.1, torch.randn(width, 8) * size
            exact.set(slot, name, a, b)
            quantized.set(slot, name, a, b)
    x = torch.randn(6, 64)
    slots = torch.tensor([1, 2, 3, 0, 3, 1])
    want = exact.add(x, torch.zeros(6, 128), exact.mask(slots))
    got = quantized.add(x.bfloat16(), torch.zeros(6, 128, dtype=torch.bfloat16), quantized.mask(slots)).float()
    assert (got[3] == 0).all()  # the base row has no delta
    for row in (0, 1, 2, 4, 5):
        assert (got[row] - want[row]).norm() <= 0.03 * want[row].norm()


def test_models_it_does_not_run_fall_back_to_transformers():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32)  # fmt: skip
    model = Gemma3ForCausalLM(config)
    assert "gemma3" in (decoder.unsupported(model) or "")
    assert Base("gemma", weights="bf16", model=model).decoder is None
    with pytest.raises(Exception, match="lean decoder does not run"):
        Base("gemma", model=Gemma3ForCausalLM(config), lean=True)
    assert Base("llama", weights="bf16", model=_llama()).decoder is not None  # every form but fp32 runs lean


def test_on_own_thread_returns_and_raises():
    assert on_own_thread(lambda: 41 + 1) == 42
    with pytest.raises(ZeroDivisionError):
        on_own_thread(lambda: 1 / 0)


@pytest.mark.parametrize("lean", [False, True])
def test_a_shared_prefix_is_computed_once_with_the_same_answers(lean):
    """Prompts that start alike (one the start of another, one repeated, one on an adapter) prefill only what
    follows the longest kept start: the logits equal a fresh prefill's and the greedy answers are the same."""
    fresh, cached = (Base("m", model=_llama(), lean=lean) for _ in range(2))
    fresh.prefixes.max_bytes = 0
    for base in (fresh, cached):
        for name, (a, b) in _adapter(_llama(), rank=4, seed=5).items():
            base._set(name, 1, a, b)
    torch.manual_seed(4)
    shared = torch.randint(0, 95, (40,)).tolist()
    prompts = [shared + torch.randint(0, 95, (n,)).tolist() for n in (6, 9, 1)] + [shared[:30], shared + [5]]
    prompts += [prompts[1], shared + [5, 6, 7]]
    slots = [0, 0, 0, 0, 0, 0, 1]
    for ids, slot in zip(prompts, slots, strict=True):
        got, want = (base.extend(base.start(ids, slot)) for base in (cached, fresh))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert cached.prefixes.hits == 5 and fresh.prefixes.hits == 0  # the slot-1 prompt found none of slot 0's
    assert cached.prefixes.reused == 40 + 40 + 29 + 40 + 48  # a whole kept prompt: all but its last token
    assert _decode(cached, prompts, slots) == _decode(fresh, prompts, slots)
    cached._clear(1)
    assert not any(entry.slot == 1 for entry in cached.prefixes.entries.values())


@pytest.mark.parametrize("lean", [False, True])
def test_a_prompt_prefilled_in_chunks_between_steps_gets_the_same_answer(lean):
    """A long prompt joins a running batch a few tokens per step (``begin``/``fill``): the rows already
    decoding keep stepping meanwhile, and every row's greedy answer is the one it gets alone."""
    base = Base("m", model=_llama(), lean=lean)
    base.prefixes.max_bytes = 0
    served = _served(base)
    torch.manual_seed(7)
    prompts = [torch.randint(0, 95, (n,)).tolist() for n in (5, 9, 37)]
    alone = [_decode(base, [ids], [0], tokens=10)[0] for ids in prompts]
    rows = [Row(served, ids, GenerationConfig(max_output_tokens=10)) for ids in prompts]
    batch = Batch(base)
    batch.add(rows[0])
    batch.add(rows[1])
    batch.step()
    batch.begin(rows[2])
    steps = 0
    while batch.filling:
        assert batch.fill(4) is None or not batch.filling
        batch.step()
        steps += 1
    assert steps == 10 and len(rows[0].out) > 3  # 37 tokens in chunks of 4; the others decoded meanwhile
    while batch.rows:
        batch.step()
    assert [row.out for row in rows] == alone
    assert base.in_use[0] == 0
