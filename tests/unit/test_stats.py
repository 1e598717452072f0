"""``supervisedTuningDataStats`` against numbers computed by hand.

.venv/bin/python -m pytest tests/unit/test_stats.py -q
"""

from __future__ import annotations

import pytest

from tunery.data import IGNORE_INDEX, Encoded, distribution, read_examples, tuning_data_stats
from tunery.data.stats import buckets


def example(length: int, trained: int, full_length: int | None = None) -> Encoded:
    """``length`` tokens of which the last ``trained`` carry loss."""
    ids = list(range(length))
    labels = [IGNORE_INDEX] * (length - trained) + ids[length - trained :]
    return Encoded(input_ids=ids, labels=labels, full_length=full_length or length)


# lengths 10, 20, 30, 5 (cut from 8), 15; trained 3, 5, 2, 1, 4; prompts 7, 15, 28, 4, 11.
DATASET = [example(10, 3), example(20, 5), example(30, 2), example(5, 1, full_length=8), example(15, 4)]


def test_stats_by_hand():
    stats = tuning_data_stats(DATASET, epochs=3, batch_size=2)
    histograms = {key: stats[key].pop("buckets") for key in stats if key.endswith("Distribution")}
    assert histograms["userOutputTokenDistribution"] == [{"count": 1, "left": v, "right": v + 1} for v in range(1, 6)]
    assert stats == {
        "tuningDatasetExampleCount": 5,
        "totalBillableTokenCount": 80 * 3,  # kept tokens (not the 3 truncated away) × epochs
        "tuningStepCount": 3 * 3,  # ceil(5 / 2) steps × 3 epochs
        # sorted 4, 7, 11, 15, 28: p5 at rank 0.2 → 4 + 0.2·3; p95 at rank 3.8 → 15 + 0.8·13
        "userInputTokenDistribution": {
            "sum": 65, "min": 4, "max": 28, "mean": 13.0, "median": 11.0, "p5": 4.6, "p95": 25.4,
        },
        # sorted 1, 2, 3, 4, 5
        "userOutputTokenDistribution": {
            "sum": 15, "min": 1, "max": 5, "mean": 3.0, "median": 3.0, "p5": 1.2, "p95": 4.8,
        },
        # sorted 5, 10, 15, 20, 30
        "exampleTokenDistribution": {
            "sum": 80, "min": 5, "max": 30, "mean": 16.0, "median": 15.0, "p5": 6.0, "p95": 28.0,
        },
        "totalTruncatedExampleCount": 1,
        "truncatedExampleIndices": [3],
    }  # fmt: skip


def test_buckets_cover_every_value_once_in_at_most_ten_equal_bins():
    values = [4, 7, 11, 15, 28]  # 25 wide: bins of 3 from 4
    found = buckets(values)
    assert [(b["left"], b["right"]) for b in found] == [(4 + 3 * i, 7 + 3 * i) for i in range(9)]
    assert [b["count"] for b in found] == [1, 1, 1, 1, 0, 0, 0, 0, 1]
    assert buckets([]) == [] and buckets([7, 7]) == [{"count": 2, "left": 7, "right": 8}]
    many = buckets(list(range(1000)))
    assert len(many) == 10 and sum(b["count"] for b in many) == 1000


@pytest.mark.parametrize(
    ("n", "batch", "epochs", "steps"), [(5, 1, 1, 5), (8, 8, 2, 2), (9, 8, 2, 4), (1, 8, 10, 10), (16, 4, 3, 12)]
)
def test_step_count(n, batch, epochs, steps):
    assert tuning_data_stats([example(4, 1)] * n, epochs=epochs, batch_size=batch)["tuningStepCount"] == steps


def test_distribution_even_count_rounding_and_order():
    # median of an even count is the mean of the middle two; the input order does not matter
    assert distribution([4, 1, 3, 2]) == {
        "sum": 10, "min": 1, "max": 4, "mean": 2.5, "median": 2.5, "p5": 1.15, "p95": 3.85,
    }  # fmt: skip
    assert distribution([1, 2, 2])["mean"] == 1.67  # rounded to 2 places
    assert distribution([7]) == {"sum": 7, "min": 7, "max": 7, "mean": 7.0, "median": 7.0, "p5": 7.0, "p95": 7.0}


def test_distribution_matches_numpy_percentiles():
    np = pytest.importorskip("numpy")
    values = [3, 17, 4, 99, 23, 5, 8, 42, 11, 2, 64]
    d = distribution(values)
    assert d["p5"] == round(float(np.percentile(values, 5)), 2)
    assert d["p95"] == round(float(np.percentile(values, 95)), 2)
    assert d["median"] == float(np.median(values))


def test_empty_dataset():
    stats = tuning_data_stats([], epochs=3, batch_size=8)
    assert stats["tuningDatasetExampleCount"] == stats["tuningStepCount"] == stats["totalBillableTokenCount"] == 0
    assert stats["exampleTokenDistribution"]["max"] == 0 and stats["truncatedExampleIndices"] == []


def test_stats_of_a_tokenized_file_add_up(data_dir, tiny_tokenizer):
    report = read_examples(data_dir / "multiturn.jsonl", tokenizer=tiny_tokenizer("gemma"), max_length=40)
    stats = tuning_data_stats(report.encoded, epochs=2, batch_size=4)
    lengths = [len(e.input_ids) for e in report.encoded]
    assert stats["tuningDatasetExampleCount"] == 10 and stats["tuningStepCount"] == 3 * 2
    assert stats["totalBillableTokenCount"] == sum(lengths) * 2
    assert stats["exampleTokenDistribution"]["max"] == 40
    inputs, outputs = stats["userInputTokenDistribution"], stats["userOutputTokenDistribution"]
    assert inputs["sum"] + outputs["sum"] == stats["exampleTokenDistribution"]["sum"]
    truncated = [i for i, e in enumerate(report.encoded) if e.full_length > 40]
    assert truncated and stats["truncatedExampleIndices"] == truncated
    assert stats["totalTruncatedExampleCount"] == len(truncated) == len(report.warnings)
