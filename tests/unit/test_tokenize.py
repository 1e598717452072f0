"""Loss masks: a model trains on its own turns and their end-of-turn token, nothing else.

.venv/bin/python -m pytest tests/unit/test_tokenize.py -q
"""

from __future__ import annotations

import json

import pytest

from tunery.data import IGNORE_INDEX, Example, Part, Turn, encode, end_of_turn_token, parse_example, prompt_ids
from tunery.models.templates import TEMPLATES

DATASETS = ["classify_gemini.jsonl", "classify_openai.jsonl", "multiturn.jsonl"]
END_OF_TURN = {"smollm2": "<|im_end|>", "chatml": "<|im_end|>", "gemma": "<end_of_turn>"}


def load_examples(path):
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        example, problems = parse_example(json.loads(line), number)
        assert not problems, problems
        examples.append(example)
    return examples


def trained_runs(labels):
    """Maximal runs of consecutive trained positions, as (start, end) index pairs."""
    runs, start = [], None
    for k, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = k
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, k))
            start = None
    return runs


def test_templates_under_test_are_the_catalog_templates():
    assert set(END_OF_TURN) == set(TEMPLATES)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_end_of_turn_token_comes_from_the_template(tiny_tokenizer, template):
    tokenizer = tiny_tokenizer(template)
    assert end_of_turn_token(tokenizer) == END_OF_TURN[template]
    assert tokenizer.eos_token == "<eos>"  # not the end-of-turn token: that comes from the template


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_loss_covers_model_turns_and_end_of_turn_only(tiny_tokenizer, data_dir, template, dataset):
    tokenizer = tiny_tokenizer(template)
    eot = END_OF_TURN[template]
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    for example in load_examples(data_dir / dataset):
        encoded = encode(tokenizer, example, max_length=512)
        assert not encoded.truncated
        assert len(encoded.labels) == len(encoded.input_ids) == encoded.full_length
        # A label is either masked or the token itself (no shift here; the loop shifts).
        assert all(label in (IGNORE_INDEX, token) for label, token in zip(encoded.labels, encoded.input_ids))

        answers = [turn.text for turn in example.turns if turn.role == "model"]
        runs = trained_runs(encoded.labels)
        assert len(runs) == len(answers), f"line {example.line}: one trained run per model turn"
        for (start, end), answer in zip(runs, answers):
            trained = encoded.input_ids[start:end]
            assert tokenizer.decode(trained, skip_special_tokens=False) == answer + eot
            assert trained[-1] == eot_id
            # The token before the answer (the role header's newline) and after it (the newline
            # the template puts after end-of-turn) are not trained.
            assert tokenizer.decode(encoded.input_ids[start - 1 : start]) == "\n"
            if end < len(encoded.input_ids):
                assert tokenizer.decode(encoded.input_ids[end : end + 1]) == "\n"
                assert encoded.labels[end] == IGNORE_INDEX
        assert encoded.trained_tokens == sum(end - start for start, end in runs)
        assert encoded.input_tokens == len(encoded.input_ids) - encoded.trained_tokens

        # Nothing of the system or user turns is trained.
        masked_text = tokenizer.decode(
            [t for t, label in zip(encoded.input_ids, encoded.labels) if label == IGNORE_INDEX],
            skip_special_tokens=False,
        )
        for turn in example.turns:
            if turn.role == "user":
                assert turn.text in masked_text
        if example.system:
            assert example.system in masked_text


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_prompt_ids_are_the_training_prefix(tiny_tokenizer, data_dir, template, dataset):
    """Prediction sends exactly the tokens that preceded the last answer in training."""
    tokenizer = tiny_tokenizer(template)
    for example in load_examples(data_dir / dataset):
        encoded = encode(tokenizer, example, max_length=512)
        last_start = trained_runs(encoded.labels)[-1][0]
        assert prompt_ids(tokenizer, example) == encoded.input_ids[:last_start]
        assert prompt_ids(tokenizer, example.prompt()) == encoded.input_ids[:last_start]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_smollm2_default_system_prompt_only_without_a_system(tiny_tokenizer, data_dir, template):
    tokenizer = tiny_tokenizer(template)
    with_system, without = load_examples(data_dir / "multiturn.jsonl")[:2]
    assert with_system.system and not without.system
    default = "You are a helpful AI assistant named SmolLM"
    text = tokenizer.decode(encode(tokenizer, without, 512).input_ids)
    assert (default in text) == (template == "smollm2")
    assert default not in tokenizer.decode(encode(tokenizer, with_system, 512).input_ids)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_truncation_keeps_a_prefix_and_counts_the_full_length(tiny_tokenizer, data_dir, template):
    tokenizer = tiny_tokenizer(template)
    example = load_examples(data_dir / "multiturn.jsonl")[0]
    full = encode(tokenizer, example, max_length=512)
    cut = encode(tokenizer, example, max_length=full.full_length - 3)
    assert cut.truncated and not full.truncated
    assert cut.full_length == full.full_length == len(full.input_ids)
    assert cut.input_ids == full.input_ids[: full.full_length - 3]
    assert cut.labels == full.labels[: full.full_length - 3]
    # The last three tokens are the answer's last token, end-of-turn and the untrained newline.
    assert full.labels[-1] == IGNORE_INDEX and IGNORE_INDEX not in full.labels[-3:-1]
    assert cut.trained_tokens == full.trained_tokens - 2

    exact = encode(tokenizer, example, max_length=full.full_length)
    assert not exact.truncated and exact == full


PADDED_ANSWERS = [" yes", "yes ", "  card_arrival  ", "\nyes", "yes\n", "card arrival\n\n", "\tyes\t"]


@pytest.mark.parametrize("answer", PADDED_ANSWERS)
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_whitespace_around_an_answer_is_trained_with_it(tiny_tokenizer, template, answer):
    """Every character the model writes after the prompt is trained, end-of-turn included, and the
    prompt is the exact training prefix, however the answer is padded with whitespace."""
    tokenizer = tiny_tokenizer(template)
    eot = END_OF_TURN[template]
    example = Example(turns=(Turn("user", (Part("text", "hi"),)), Turn("model", (Part("text", answer),))))
    encoded = encode(tokenizer, example, max_length=512)
    runs = trained_runs(encoded.labels)
    assert len(runs) == 1
    start, end = runs[0]
    assert tokenizer.decode(encoded.input_ids[start:end], skip_special_tokens=False) == answer + eot
    assert encoded.input_ids[end - 1] == tokenizer.convert_tokens_to_ids(eot)
    assert end == len(encoded.input_ids) - 1  # the newline after end-of-turn is not trained
    assert prompt_ids(tokenizer, example) == encoded.input_ids[:start]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_answer_quoted_in_the_prompt_is_trained_only_in_the_model_turn(tiny_tokenizer, template):
    tokenizer = tiny_tokenizer(template)
    example = Example(
        turns=(
            Turn("user", (Part("text", "is it card_arrival or not"),)),
            Turn("model", (Part("text", "card_arrival"),)),
        ),
        system="Answer card_arrival if unsure.",
    )
    encoded = encode(tokenizer, example, max_length=512)
    ((start, end),) = trained_runs(encoded.labels)
    assert tokenizer.decode(encoded.input_ids[start:end]) == "card_arrival" + END_OF_TURN[template]
    assert prompt_ids(tokenizer, example) == encoded.input_ids[:start]
