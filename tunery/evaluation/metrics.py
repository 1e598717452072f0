"""Task metrics. Classification: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any


def normalize_label(text: str) -> str:
    return re.sub(r"[\s_\-]+", "_", text.strip().lower()).strip("_.:;,'\"`")


def match_label(output: str, labels: Sequence[str]) -> str | None:
    """The label an answer names: an exact match, else the label mentioned first in the text."""
    answer = normalize_label(output)
    by_norm = {normalize_label(label): label for label in labels}
    if answer in by_norm:
        return by_norm[answer]
    found = [(answer.find(norm), -len(norm), label) for norm, label in by_norm.items() if norm and norm in answer]
    return min(found)[2] if found else None


def classification_metrics(targets: Sequence[str], predictions: Sequence[str | None]) -> dict[str, Any]:
    """Metrics over gold ``targets`` and predicted labels (None: no label recognised in the answer)."""
    labels = sorted(set(targets) | {p for p in predictions if p is not None})
    per_class = {}
    for label in labels:
        tp = sum(1 for t, p in zip(targets, predictions) if t == label and p == label)
        fp = sum(1 for t, p in zip(targets, predictions) if t != label and p == label)
        fn = sum(1 for t, p in zip(targets, predictions) if t == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    gold = [label for label in labels if per_class[label]["support"]]
    confusion = Counter((t, p if p is not None else "<none>") for t, p in zip(targets, predictions))
    return {
        "accuracy": sum(t == p for t, p in zip(targets, predictions)) / len(targets) if targets else 0.0,
        "macro_f1": statistics.fmean(per_class[label]["f1"] for label in gold) if gold else 0.0,
        "per_class": per_class,
        "confusion": [{"target": t, "predicted": p, "count": n} for (t, p), n in sorted(confusion.items())],
        "unrecognized": sum(p is None for p in predictions),
    }


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
