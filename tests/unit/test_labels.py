"""Closed label sets: the constraint never changes an answer that is already a label (greedy), on every path.

The tuned fixture (``tuned_lora``: the tiny model taught the 3-label ticket fixture) answers labels unconstrained;
each constrained path must give the same answer. A fixed 24-token takeover once made every evaluation answer
with a short budget the same label (the closing completion), whatever the model said.
"""

from __future__ import annotations

import math

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


# --- a tuned model's label set is kept: the default constraint, its opt-out, the answers' probabilities --------


@pytest.fixture(scope="module")
def relabelled(tuned_lora, tmp_path_factory):
    """The tuned fixture with another label set in its ``tunery.json`` (yes / no), which its free answers never
    name: the kept constraint must be what makes them labels."""
    import json
    import shutil

    copy = tmp_path_factory.mktemp("relabelled") / "model"
    shutil.copytree(tuned_lora, copy)
    manifest = json.loads((copy / "tunery.json").read_text())
    (copy / "tunery.json").write_text(json.dumps({**manifest, "labels": ["yes", "no thanks"]}))
    return copy


def test_a_kept_label_set_holds_every_answer_unless_the_request_opts_out(relabelled, tickets):
    from tunery.serving.engine import Engine

    engine = Engine(str(relabelled))
    kept = [engine.generate(t, generation_config({"maxOutputTokens": 12})).text for t in tickets]
    assert set(kept) <= {"yes", "no thanks"}
    free = free_answers(engine, tickets, 12)
    assert not set(free) & {"yes", "no thanks"}
    own = generation_config(label_config(["card_arrival", "transfer_failed"], 12))  # a request's own set wins
    assert {engine.generate(t, own).text for t in tickets} <= {"card_arrival", "transfer_failed"}


def test_logprobs_of_a_label_answer(engine, tickets, labels):
    config = generation_config({"maxOutputTokens": 12, "responseLogprobs": True, "logprobs": 5})
    for ticket in tickets[:3]:
        generation = engine.generate(ticket, config)
        assert generation.text in labels and generation.logprobs
        assert "".join(t.token for t in generation.logprobs) == generation.text
        assert 0 < math.exp(generation.logprob) <= 1
        for token in generation.logprobs:
            assert token.top[0][1] == token.token_id  # greedy: the chosen token is the most likely one allowed
            assert sum(math.exp(lp) for _, _, lp in token.top) <= 1 + 1e-5
        first = {text for text, _, _ in generation.logprobs[0].top}
        assert all(any(label.startswith(text) for label in labels) for text in first)  # only labels may start


def _line(text: str, **config) -> str:
    import json

    return json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": text}]}],
                                   "systemInstruction": {"parts": [{"text": "Route the ticket."}]},
                                   "generationConfig": {"maxOutputTokens": 12, **config}}})  # fmt: skip


def _batch(model, tickets, tmp_path, name):
    """``tunery predict MODEL --input --output``: a batch prediction on a real model host process; each ticket
    asked as the model keeps it, then opted out (text/plain), then with logprobs. The answers, in that order."""
    import json

    from typer.testing import CliRunner

    from tunery.cli import app

    texts = [t.prompt().turns[-1].parts[0].text for t in tickets[:4]]
    lines = [_line(x) for x in texts] + [_line(x, responseMimeType="text/plain") for x in texts]
    lines.append(_line(texts[0], responseLogprobs=True, logprobs=3))
    source, output = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-out.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["predict", str(model), "--input", str(source), "--output", str(output)])
    assert result.exit_code == 0, result.output
    records = [json.loads(x)["response"]["candidates"][0] for x in output.read_text().splitlines()]
    answers = [r["content"]["parts"][0]["text"] for r in records]
    return answers[:4], answers[4:8], records[8]


def test_batch_on_the_model_host_keeps_labels_and_the_models_answers(tuned_lora, relabelled, tickets, tmp_path):
    kept, free, with_logprobs = _batch(tuned_lora, tickets, tmp_path, "tuned")
    read = read_manifest(tuned_lora)["labels"]
    assert all(a in read for a in free) and kept == free  # the invariant, through the host
    chosen = with_logprobs["logprobsResult"]["chosenCandidates"]
    assert "".join(c["token"] for c in chosen) == kept[0] and with_logprobs["avgLogprobs"] <= 0
    kept, free, _ = _batch(relabelled, tickets, tmp_path, "relabelled")
    assert set(kept) <= {"yes", "no thanks"} and not set(free) & {"yes", "no thanks"}


def test_embedded_sdk_and_cli_keep_labels(tuned_lora, relabelled, tickets):
    from typer.testing import CliRunner

    from tunery.cli import app
    from tunery.sdk.generative import GenerativeModel

    model = GenerativeModel(str(tuned_lora), system_instruction="Route the ticket.")
    text = tickets[0].prompt().turns[-1].parts[0].text
    kept = model.generate_content(text, {"max_output_tokens": 12, "response_logprobs": True, "logprobs": 2})
    free = model.generate_content(text, {"max_output_tokens": 12, "response_mime_type": "text/plain"})
    assert free.text in read_manifest(tuned_lora)["labels"] and kept.text == free.text
    assert kept.logprobs_result["chosenCandidates"] and kept.avg_logprobs <= 0
    answered = CliRunner().invoke(app, ["predict", str(relabelled), text, "--system", "Route the ticket."])
    assert answered.exit_code == 0 and answered.output.strip() in ("yes", "no thanks")
    opted = CliRunner().invoke(app, ["predict", str(relabelled), text, "--system", "Route the ticket.", "--free-text"])
    assert opted.exit_code == 0 and opted.output.strip() == free.text
