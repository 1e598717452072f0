"""Closed label sets: the constraint never changes an answer that is already a label (greedy), on every path.

The tuned fixture (``tuned_lora``: the tiny model taught the 3-label ticket fixture) answers labels unconstrained;
each constrained path must give the same answer. A fixed 24-token takeover once made every evaluation answer
with a short budget the same label (the closing completion), whatever the model said.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_evaluation_constrained_to_labels_keeps_the_answers(tuned_lora, data_dir, classify_train, tmp_path):
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
    kept = compare_models(data, [Candidate("tuned", str(tuned_lora))], Options(advice=False))  # the model's own set
    assert [p.output for p in kept.evaluations[0].predictions] == free
    # every answer's probability: the report's calibration and accuracy at coverage
    assert all(0 < p.confidence <= 1 for p in kept.evaluations[0].predictions)
    from tunery.evaluation.report import write_report

    files = write_report(kept, tmp_path / "report")
    assert "calibration" in {path.stem for path in files.plots}
    markdown = files.markdown.read_text()
    assert "## Confidence" in markdown and "accuracy at 50%" in markdown


def test_calibration_and_accuracy_at_coverage():
    from tunery.evaluation.metrics import calibration

    found = calibration([0.95, 0.85, 0.35, 0.62], [True, True, False, False])
    assert [c["accuracy"] for c in found["coverage"]] == [1.0, 1.0, 2 / 3, 0.5, 0.5]
    assert found["coverage"][1]["threshold"] == 0.85 and found["coverage"][1]["answered"] == 2
    assert [b["count"] for b in found["bins"]] == [1, 1, 1, 1]
    assert found["ece"] == pytest.approx((0.05 + 0.15 + 0.35 + 0.62) / 4)


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


# --- fuzzed label sets: only labels come back, and a label the model says is kept --------------------------------

PIECES = ["card", "_arrival", "transfer", " failed", "é", "日本", "🙂", 'Ä"q"', "-", "declined", "x"]
label_text = st.lists(st.sampled_from(PIECES), min_size=1, max_size=4).map("".join)


@st.composite
def label_sets(draw) -> list[str]:
    """1-6 labels of several tokens, some sharing prefixes (a label and its extension), unicode among them;
    sometimes the fixture's own answer ``card_arrival`` or a prefix of it."""
    labels = draw(st.lists(label_text, min_size=1, max_size=4, unique=True))
    labels += [label + draw(label_text) for label in labels if draw(st.booleans())]  # shared prefixes
    if draw(st.booleans()):
        labels.append(draw(st.sampled_from(["card_arrival", "card", "card_arrival_late"])))
    return list(dict.fromkeys(labels))[:6]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=label_sets(), extra=st.integers(min_value=0, max_value=3), which=st.integers(0, 9))
def test_fuzzed_label_sets_answer_only_labels_and_keep_a_label_answer(engine, tickets, labels, extra, which):
    tokens = max(len(engine.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    budget = tokens + 1 + extra
    ticket = tickets[which]
    answer = engine.generate(ticket, generation_config(label_config(labels, budget))).text
    assert answer in [label.strip() for label in labels]  # every answer is stripped of the spaces around it
    free = engine.generate(ticket, generation_config({"maxOutputTokens": budget, "responseMimeType": "text/plain"}))
    if free.text in labels and free.finish_reason == "STOP":
        assert answer == free.text


# --- extraction: a closed schema learned from JSON answers, kept like a label set ----------------------------


def _json_rows(answers: list[object]) -> list[dict]:
    import json

    turns = [([{"text": f"message {i}"}], [{"text": json.dumps(a)}]) for i, a in enumerate(answers)]
    return [{"contents": [{"role": "user", "parts": u}, {"role": "model", "parts": m}]} for u, m in turns]


def test_a_closed_schema_is_learned_from_json_answers(tmp_path):
    import json

    from tunery.evaluation.tasks import training_schema

    def learned(answers, compact=False):
        path = tmp_path / "train.jsonl"
        rows = _json_rows(answers)
        if compact:
            for row, a in zip(rows, answers, strict=True):
                row["contents"][1]["parts"][0]["text"] = json.dumps(a, separators=(",", ":"))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return training_schema(path)

    found = learned([{"city": "Paris", "nights": 2, "extras": ["wifi"]},
                     {"city": None, "nights": 3.5, "extras": [], "vip": True}])  # fmt: skip
    assert found == {
        "responseSchema": {
            "type": "OBJECT",
            "properties": {"city": {"type": "STRING", "nullable": True}, "nights": {"type": "NUMBER"},
                           "extras": {"type": "ARRAY", "items": {"type": "STRING"}}, "vip": {"type": "BOOLEAN"}},
            "required": ["city", "nights", "extras"],
            "propertyOrdering": ["city", "nights", "extras", "vip"],
        },
        "separators": [", ", ": "],
    }  # fmt: skip
    assert learned([{"a": 1}, {"a": 2}], compact=True)["separators"] == [",", ":"]
    assert learned([{"a": 1}, {"a": "one"}]) is None  # a key whose values differ in type: no closed schema
    assert learned([{"a": 1}, ["not", "an", "object"]]) is None


def test_a_kept_answer_schema_holds_answers_unless_the_request_opts_out(tuned_lora, tmp_path, tickets):
    import json
    import shutil

    from tunery.serving.constrain import check_answer, kept_constraint
    from tunery.serving.engine import Engine

    schema = {"type": "OBJECT", "properties": {"label": {"type": "STRING"}, "urgent": {"type": "BOOLEAN"}},
              "required": ["label", "urgent"], "propertyOrdering": ["label", "urgent"]}  # fmt: skip
    copy = tmp_path / "extractor"
    shutil.copytree(tuned_lora, copy)
    manifest = json.loads((copy / "tunery.json").read_text())
    kept = {"responseSchema": schema, "separators": [", ", ": "]}
    (copy / "tunery.json").write_text(json.dumps({**manifest, "labels": None, "answerSchema": kept}))
    engine = Engine(str(copy))
    config = generation_config({"maxOutputTokens": 40})
    held = kept_constraint(config, engine.manifest)
    for ticket in tickets[:3]:
        answer = engine.generate(ticket, config).text
        assert check_answer(held, answer) is None and ", " in answer and '": ' in answer  # spaced as the answers
        assert list(json.loads(answer)) == ["label", "urgent"]
    assert free_answers(engine, tickets[:3], 40) == free_answers(Engine(str(tuned_lora)), tickets[:3], 40)
