"""Dataset statistics in the shape of Vertex's ``supervisedTuningDataStats``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from tunery.data.tokenize import Encoded

BUCKETS = 10  # histogram bins per token distribution


def default_epochs(example_count: int) -> int:
    """About 1,000 example passes, 2 to 10 epochs: small datasets need more passes to be learned."""
    return max(2, min(10, math.ceil(1000 / max(example_count, 1))))


def distribution(values: Sequence[int]) -> dict[str, float]:
    """sum, min, max, mean, median, p5 and p95 of a list of token counts."""
    if not values:
        return {"sum": 0, "min": 0, "max": 0, "mean": 0.0, "median": 0.0, "p5": 0.0, "p95": 0.0}
    ordered = sorted(values)
    return {
        "sum": sum(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 2),
        "median": float(statistics.median(ordered)),
        "p5": round(_percentile(ordered, 5), 2),
        "p95": round(_percentile(ordered, 95), 2),
    }


def buckets(values: Sequence[int], most: int = BUCKETS) -> list[dict[str, int]]:
    """A histogram as Vertex's ``DatasetDistribution.buckets``: at most ``most`` equal whole-number bins
    ``[left, right)`` from the least value to past the largest, each with its ``count``."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, math.ceil((hi - lo + 1) / most))
    counts = [0] * ((hi - lo) // width + 1)
    for value in values:
        counts[(value - lo) // width] += 1
    return [{"count": n, "left": lo + i * width, "right": lo + (i + 1) * width} for i, n in enumerate(counts)]


def _histogram(values: Sequence[int]) -> dict[str, Any]:
    return {**distribution(values), "buckets": buckets(values)}


def _percentile(ordered: Sequence[int], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def tuning_data_stats(encoded: Sequence[Encoded], epochs: int, batch_size: int) -> dict[str, Any]:
    """``supervisedTuningDataStats`` for a tokenized dataset tuned for ``epochs`` at ``batch_size``."""
    kept = [len(e.input_ids) for e in encoded]
    truncated = [i for i, e in enumerate(encoded) if e.truncated]
    return {
        "tuningDatasetExampleCount": len(encoded),
        "totalBillableTokenCount": sum(kept) * epochs,
        "tuningStepCount": math.ceil(len(encoded) / batch_size) * epochs if encoded else 0,
        "userInputTokenDistribution": _histogram([e.input_tokens for e in encoded]),
        "userOutputTokenDistribution": _histogram([e.trained_tokens for e in encoded]),
        "exampleTokenDistribution": _histogram(kept),
        "totalTruncatedExampleCount": len(truncated),
        "truncatedExampleIndices": truncated,
    }
