"""Task metrics against values computed by hand, edge cases included (empty answers, labels never
predicted, invalid JSON).

    .venv/bin/python -m pytest tests/unit/test_metrics.py -q
"""

from __future__ import annotations

import pytest

from tunery.data.formats import Example, Part, Turn
from tunery.errors import ConfigError, DatasetError
from tunery.evaluation.compare import Pricing
from tunery.evaluation.metrics import (
    NO_LABEL,
    classification_metrics,
    extraction_metrics,
    extraction_score,
    flatten_fields,
    generation_metrics,
    match_label,
    parse_json_object,
    percentile,
    rouge_l,
)
from tunery.evaluation.tasks import infer_kind, resolve_task


def example(user: str, answer: str, line: int = 1) -> Example:
    return Example(turns=(Turn("user", (Part("text", user),)), Turn("model", (Part("text", answer),))), line=line)


# classification ------------------------------------------------------------------------------------------------


def test_classification_by_hand():
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", None])
    assert m["accuracy"] == 0.5
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert m["unrecognized"] == 1
    assert {"target": "c", "predicted": NO_LABEL, "count": 1} in m["confusion"]
    assert {"target": "a", "predicted": "b", "count": 1} in m["confusion"]
    assert sum(row["count"] for row in m["confusion"]) == 4


def test_labels_never_predicted_and_never_expected():
    # "b" is in the label set but never expected nor predicted; "d" is predicted but never expected.
    m = classification_metrics(["a", "a"], ["a", "d"], labels=["a", "b", "d"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["d"]["support"] == 0 and m["per_class"]["d"]["precision"] == 0.0
    assert m["macro_f1"] == pytest.approx(2 / 3)  # only classes that occur in the targets are averaged
    assert m["accuracy"] == 0.5


def test_classification_of_nothing_and_of_empty_answers():
    assert classification_metrics([], [])["accuracy"] == 0.0
    assert classification_metrics([], [])["macro_f1"] == 0.0
    m = classification_metrics(["a", "b"], [match_label("", ["a", "b"]), match_label("   ", ["a", "b"])])
    assert m["accuracy"] == 0.0 and m["unrecognized"] == 2 and m["macro_f1"] == 0.0


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("card_arrival", "card_arrival"),
        ("Card arrival.", "card_arrival"),
        ("The label is card_declined", "card_declined"),
        ("card_declined or card_arrival", "card_declined"),  # the first one named
        ("no idea", None),
        ("", None),
    ],
)
def test_match_label(output, expected):
    assert match_label(output, ["card_arrival", "card_declined"]) == expected


# extraction ----------------------------------------------------------------------------------------------------


def test_extraction_by_hand():
    targets = ['{"name": "Ann", "age": 30}', '{"city": "Oslo", "zip": "0150"}']
    outputs = ['{"name": "Ann", "age": 31, "x": 1}', "not json"]
    m = extraction_metrics(targets, outputs)
    assert m["json_valid"] == 0.5
    assert m["exact_match"] == 0.0
    # example 1: name right (tp), age wrong (fp + fn), x spurious (fp); example 2: city and zip missed (fn, fn)
    assert m["field_precision"] == pytest.approx(1 / 3)
    assert m["field_recall"] == pytest.approx(1 / 4)
    assert m["field_f1"] == pytest.approx(2 / 7)
    assert m["per_field"]["age"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "missing": 0, "wrong": 1, "spurious": 0}
    )
    assert m["per_field"]["x"]["spurious"] == 1 and m["per_field"]["x"]["support"] == 0
    assert m["per_field"]["city"]["missing"] == 1
    assert m["per_field"]["name"]["f1"] == 1.0


def test_extraction_exact_match_code_fences_nesting_and_whitespace():
    targets = ['{"a": {"b": 1, "c": "x"}}', '{"k": [1, 2]}']
    outputs = ['```json\n{"a": {"c": " x ", "b": 1}}\n```', '{"k": [2, 1]}']
    m = extraction_metrics(targets, outputs)
    assert m["json_valid"] == 1.0
    assert m["exact_match"] == 0.5  # key order and padding do not matter; list order does
    assert set(m["per_field"]) == {"a.b", "a.c", "k"}
    assert m["field_f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("output", ["", "   ", "[1, 2]", '"text"', "{'single': 'quotes'}", '{"a": 1', "null"])
def test_invalid_json_scores_zero(output):
    m = extraction_metrics(['{"a": 1}'], [output])
    assert m["json_valid"] == 0.0 and m["field_f1"] == 0.0 and m["field_recall"] == 0.0
    assert extraction_score('{"a": 1}', output) == 0.0
    assert parse_json_object(output) is None


def test_extraction_score_of_one_example():
    assert extraction_score('{"a": 1, "b": 2}', '{"a": 1, "b": 3}') == pytest.approx(0.5)
    assert extraction_score("{}", "{}") == 1.0
    assert flatten_fields({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1, "d": {}}


def test_extraction_of_nothing():
    assert extraction_metrics([], [])["json_valid"] == 0.0


# generation ----------------------------------------------------------------------------------------------------


def test_rouge_l_by_hand():
    # LCS of "the cat sat" in "the cat sat on the mat": 3 tokens; precision 3/3, recall 3/6, F = 2/3
    assert rouge_l("the cat sat on the mat", "the cat sat") == pytest.approx(2 / 3)
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("the cat sat", "") == 0.0
    assert rouge_l("the cats sat", "the cat sitting") == pytest.approx(2 / 3)  # stemming: cats → cat


def test_generation_metrics():
    m = generation_metrics(["the cat sat", "a dog"], ["the cat sat", ""])
    assert m["exact_match"] == 0.5
    assert m["rougeL"] == pytest.approx(0.5)
    assert 0 < m["chrf"] < 100
    assert generation_metrics(["same text"], [" same text "])["exact_match"] == 1.0
    assert generation_metrics(["same text"], ["same text"])["chrf"] == pytest.approx(100.0)
    assert generation_metrics(["abc"], [""])["chrf"] == 0.0
    assert generation_metrics([], []) == {"exact_match": 0.0, "rougeL": 0.0, "chrf": 0.0}


# tasks, latency, cost ------------------------------------------------------------------------------------------


def test_task_inference():
    assert infer_kind(['{"a": 1}', '{"b": 2}']) == "extraction"
    assert infer_kind(["card_arrival", "card_declined", "card_arrival"]) == "classification"
    assert infer_kind(["The meeting is now on tuesday morning.", "Rates unchanged until next year."]) == "generation"
    assert infer_kind(["a\nb"]) == "generation"
    assert infer_kind([]) == "generation"


def test_resolve_task_names_the_bad_line_and_value():
    with pytest.raises(DatasetError) as info:
        resolve_task("extraction", [example("x", '{"a": 1}', 1), example("y", "not json", 2)], path="eval.jsonl")
    assert "eval.jsonl:2: target" in str(info.value) and "not json" in str(info.value)
    with pytest.raises(ConfigError, match="--task 'summaries'"):
        resolve_task("summaries", [])
    task = resolve_task("auto", [example("x", "b")], label_sources=[example("y", "a")])
    assert task.kind == "classification" and task.labels == ("a", "b")


def test_percentile_matches_numpy_linear():
    import numpy as np

    values = [120.0, 80.0, 95.0, 300.0, 101.0]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 95) == 0.0


def test_cost_per_1000_requests():
    price = Pricing(input_per_million=0.15, output_per_million=0.60)
    # 1,000 × (100 × 0.15 + 10 × 0.60) / 1,000,000 = 0.021
    assert price.per_1k_requests({"prompt_tokens_mean": 100, "output_tokens_mean": 10}) == pytest.approx(0.021)
    assert Pricing(0, 0).per_1k_requests({"prompt_tokens_mean": 5, "output_tokens_mean": 5}) == 0.0
    with pytest.raises(ConfigError, match="0 or more"):
        Pricing(-1, 0)
