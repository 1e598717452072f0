"""Closed label sets: the constraint never changes an answer that is already a label (greedy), on every path.

The tuned fixture (``tuned_lora``: the tiny model taught the 3-label ticket fixture) answers labels unconstrained;
each constrained path must give the same answer. A fixed 24-token takeover once made every evaluation answer
with a short budget the same label (the closing completion), whatever the model said.
"""

from __future__ import annotations

import pytest

from tunery.evaluation.compare import read_evaluation_data
from tunery.models.tuned import read_manifest
from tunery.serving.constrain import label_config
from tunery.serving.gemini import generation_config


@pytest.fixture(scope="module")
def labels(tuned_lora) -> list[str]:
    return read_manifest(tuned_lora)["labels"]


@pytest.fixture(scope="module")
def engine(tuned_lora):
    from tunery.serving.engine import Engine

    return Engine(str(tuned_lora))


@pytest.fixture(scope="module")
def tickets(data_dir):
    return read_evaluation_data(data_dir / "classify_openai.jsonl")


def free_answers(engine, tickets, budget: int = 16) -> list[str]:
    config = generation_config({"maxOutputTokens": budget, "responseMimeType": "text/plain"})
    return [engine.generate(t, config).text for t in tickets]


def test_the_fixture_answers_labels(engine, tickets, labels):
    assert all(answer in labels for answer in free_answers(engine, tickets))


@pytest.mark.parametrize("budget", [6, 12, 40, 256])
def test_engine_enum_keeps_a_label_answer_whatever_the_budget(engine, tickets, labels, budget):
    config = generation_config(label_config(labels, budget))
    assert [engine.generate(t, config).text for t in tickets] == free_answers(engine, tickets)


def test_evaluation_constrained_to_labels_keeps_the_answers(tuned_lora, data_dir, classify_train):
    from tunery.evaluation.compare import Candidate, Options, compare_models

    data = data_dir / "classify_openai.jsonl"
    runs = {
        constrain: compare_models(
            data,
            [Candidate("tuned", str(tuned_lora))],
            Options(train=str(classify_train), constrain=constrain, advice=False),  # fmt: skip
        ).evaluations[0]
        for constrain in ("labels", "none")
    }
    free = [p.output for p in runs["none"].predictions]
    assert all(answer in runs["labels"].task.labels for answer in free)
    assert [p.output for p in runs["labels"].predictions] == free
