"""The serving engine on tiny models: greedy and deterministic, token counts, output limits, stops.

.venv/bin/python -m pytest tests/unit/test_engine.py -q
"""

from __future__ import annotations

import json

import pytest

from tunery.data import parse_example, prompt_ids, user_example
from tunery.errors import ModelError
from tunery.serving import Engine, GenerationConfig


@pytest.fixture(scope="module")
def examples(data_dir):
    lines = (data_dir / "classify_gemini.jsonl").read_text().splitlines()
    return [parse_example(json.loads(line), n)[0] for n, line in enumerate(lines, start=1)]


@pytest.fixture(scope="module", params=["base-chatml", "base-gemma", "base-smollm2", "tuned_lora", "tuned_full"])
def engine(request, tiny_model_factory):
    if request.param.startswith("base-"):
        return Engine(tiny_model_factory(request.param.removeprefix("base-")))
    return Engine(request.getfixturevalue(request.param))


def test_greedy_generation_is_deterministic_and_counts_tokens(engine, examples):
    for example in examples[:3]:
        prompt = example.prompt()
        first = engine.generate(prompt, GenerationConfig(max_output_tokens=6))
        second = engine.generate(prompt, GenerationConfig(max_output_tokens=6))
        assert (first.text, first.output_tokens, first.finish_reason) == (
            second.text,
            second.output_tokens,
            second.finish_reason,
        )
        ids = prompt_ids(engine.tokenizer, prompt)
        assert first.prompt_tokens == len(ids) == engine.count_tokens(prompt) == engine.count_tokens(example)
        assert 1 <= first.output_tokens <= 6
        assert first.finish_reason in ("STOP", "MAX_TOKENS")
        if first.finish_reason == "MAX_TOKENS":
            assert first.output_tokens == 6
        assert first.latency_ms > 0


@pytest.mark.parametrize("limit", [1, 2])
def test_max_output_tokens_is_respected(engine, examples, limit):
    generation = engine.generate(examples[0].prompt(), GenerationConfig(max_output_tokens=limit))
    assert generation.output_tokens <= limit
    if generation.finish_reason == "MAX_TOKENS":
        assert generation.output_tokens == limit


def test_untrained_base_runs_out_of_tokens(tiny_model, examples):
    generation = Engine(tiny_model).generate(examples[0].prompt(), GenerationConfig(max_output_tokens=5))
    assert (generation.finish_reason, generation.output_tokens) == ("MAX_TOKENS", 5)


def test_tuned_model_answers_with_a_label_and_stops(tuned_lora, examples):
    engine = Engine(tuned_lora)
    assert engine.manifest is not None and engine.manifest["tuningMode"] == "PEFT_ADAPTER"
    eot = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eot in engine.stop_ids and engine.tokenizer.eos_token_id in engine.stop_ids
    generation = engine.generate(examples[0].prompt(), GenerationConfig(max_output_tokens=20))
    # It learned the format: a label, then end-of-turn (not shown), well before the limit.
    assert generation.finish_reason == "STOP" and generation.output_tokens < 20
    assert generation.text in {"card_arrival", "card_declined", "transfer_failed"}
    assert "<|im_end|>" not in generation.text


def test_stop_sequences_cut_the_text(tuned_lora, examples):
    engine = Engine(tuned_lora)
    full = engine.generate(examples[0].prompt(), GenerationConfig(max_output_tokens=20))
    assert "_" in full.text
    cut = engine.generate(examples[0].prompt(), GenerationConfig(max_output_tokens=20, stop_sequences=("_",)))
    assert cut.text == full.text[: full.text.index("_")] and cut.finish_reason == "STOP"


def test_sampling_with_a_seed_is_reproducible(engine, examples):
    config = GenerationConfig(max_output_tokens=8, temperature=1.5, top_k=50, seed=7)
    a = engine.generate(examples[1].prompt(), config)
    b = engine.generate(examples[1].prompt(), config)
    assert (a.text, a.output_tokens) == (b.text, b.output_tokens)


def _answers(generations):
    return [(g.text, g.output_tokens, g.finish_reason, g.prompt_tokens) for g in generations]


def test_a_batch_answers_each_prompt_as_it_is_answered_alone(engine, examples):
    prompts = [e.prompt() for e in examples[:4]] + [user_example("hi")]  # of several lengths: left padding
    configs = [GenerationConfig(max_output_tokens=n) for n in (6, 3, 8, 1, 5)]
    ids = [engine.prompt(p, c) for p, c in zip(prompts, configs, strict=True)]
    assert len({len(i) for i in ids}) > 1
    alone = [engine.generate(p, c) for p, c in zip(prompts, configs, strict=True)]
    assert _answers(engine.generate_batch(ids, configs)) == _answers(alone)


def test_a_batch_cuts_each_answer_at_its_own_stop_or_limit(tuned_lora, examples):
    engine = Engine(tuned_lora)  # answers a label, then its end-of-turn token
    prompts = [examples[0].prompt(), examples[1].prompt(), user_example("a much longer question " * 5)]
    configs = [GenerationConfig(max_output_tokens=n) for n in (20, 2, 12)]
    alone = [engine.generate(p, c) for p, c in zip(prompts, configs, strict=True)]
    batched = engine.generate_batch([engine.prompt(p, c) for p, c in zip(prompts, configs, strict=True)], configs)
    assert _answers(batched) == _answers(alone)
    assert {g.finish_reason for g in alone} == {"STOP", "MAX_TOKENS"}


def test_sampled_rows_and_stop_sequences_batch_and_get_their_answers_alone(tuned_lora, examples):
    engine = Engine(tuned_lora)
    prompts = [examples[0].prompt(), examples[1].prompt(), examples[2].prompt(), user_example("hi")]
    configs = [
        GenerationConfig(max_output_tokens=8, temperature=1.2, top_k=40, top_p=0.9, seed=5),
        GenerationConfig(max_output_tokens=20, stop_sequences=("_",)),
        GenerationConfig(max_output_tokens=8, temperature=0.7, seed=11),
        GenerationConfig(max_output_tokens=5),
    ]
    alone = [engine.generate(p, c) for p, c in zip(prompts, configs, strict=True)]
    batched = engine.generate_batch([engine.prompt(p, c) for p, c in zip(prompts, configs, strict=True)], configs)
    assert _answers(batched) == _answers(alone)
    assert "_" not in alone[1].text and alone[1].finish_reason == "STOP"


def test_prompt_too_long_for_the_context(tiny_model):
    engine = Engine(tiny_model)
    long = user_example(" ".join(["card"] * 400))
    with pytest.raises(ModelError, match="exceeds the model's context of 512 tokens"):
        engine.generate(long, GenerationConfig(max_output_tokens=200))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_output_tokens": 0}, "maxOutputTokens 0"), ({"temperature": 3}, "temperature 3"), ({"top_p": 0}, "topP 0")],
)
def test_generation_config_is_checked(kwargs, message):
    with pytest.raises(ModelError, match=message):
        GenerationConfig(**kwargs)
