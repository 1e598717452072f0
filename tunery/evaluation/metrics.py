"""Task metrics, computed from gold targets and model outputs.

- classification: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix;
- extraction (JSON objects): JSON validity rate, exact match, field-level precision/recall/F1;
- generation (free text): exact match, ROUGE-L (``rouge-score``) and chrF (``sacrebleu``).

Each ``*_metrics`` function takes whole lists and returns a JSON-ready dict; the per-example scores
that error analysis sorts by come from the ``*_score`` functions.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

NO_LABEL = "<none>"  # the confusion-matrix column of answers that name no label


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


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 from counts; 0.0 where a ratio has no denominator."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def classification_metrics(
    targets: Sequence[str], predictions: Sequence[str | None], labels: Sequence[str] = ()
) -> dict[str, Any]:
    """Metrics over gold ``targets`` and predicted labels (None: no label recognised in the answer).

    ``labels`` adds classes that neither list holds (they show with zero support). Macro-F1 averages
    the classes that occur in ``targets``; a class only ever predicted still costs precision elsewhere.
    """
    classes = sorted(set(labels) | set(targets) | {p for p in predictions if p is not None})
    per_class = {}
    for label in classes:
        tp = sum(1 for t, p in zip(targets, predictions) if t == label and p == label)
        fp = sum(1 for t, p in zip(targets, predictions) if t != label and p == label)
        fn = sum(1 for t, p in zip(targets, predictions) if t == label and p != label)
        per_class[label] = {**prf(tp, fp, fn), "support": tp + fn}
    gold = [label for label in classes if per_class[label]["support"]]
    confusion = Counter((t, p if p is not None else NO_LABEL) for t, p in zip(targets, predictions))
    return {
        "accuracy": sum(t == p for t, p in zip(targets, predictions)) / len(targets) if targets else 0.0,
        "macro_f1": statistics.fmean(per_class[label]["f1"] for label in gold) if gold else 0.0,
        "per_class": per_class,
        "confusion": [{"target": t, "predicted": p, "count": n} for (t, p), n in sorted(confusion.items())],
        "unrecognized": sum(p is None for p in predictions),
    }


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a model answered (a Markdown code fence around it is allowed), else None."""
    stripped = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, flags=re.DOTALL)
    if fence:
        stripped = fence.group(1)
    try:
        value = json.loads(stripped)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def flatten_fields(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` → ``{"a.b": 1, "c": [2]}``; strings are compared stripped."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_fields(value, path + "."))
        else:
            out[path] = value.strip() if isinstance(value, str) else value
    return out


def field_counts(target: dict[str, Any], predicted: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    """Per field path: ``tp`` (same value), ``fp`` (predicted: spurious or wrong), ``fn`` (gold: missed or wrong),
    ``wrong`` (in both, values differ)."""
    gold = flatten_fields(target)
    pred = flatten_fields(predicted) if predicted is not None else {}
    counts: dict[str, dict[str, int]] = {}
    for path in gold.keys() | pred.keys():
        hit = path in gold and path in pred and gold[path] == pred[path]
        fp, fn = int(path in pred and not hit), int(path in gold and not hit)
        counts[path] = {"tp": int(hit), "fp": fp, "fn": fn, "wrong": fp * fn}
    return counts


def extraction_metrics(targets: Sequence[str], outputs: Sequence[str]) -> dict[str, Any]:
    """JSON validity, exact match and micro-averaged field precision/recall/F1 (plus per field).

    An output that is not a JSON object counts as valid for nothing and predicts no field: every gold
    field of that example is a miss. Targets that are not JSON objects are an input error.
    """
    gold = [_target_object(t, i) for i, t in enumerate(targets)]
    parsed = [parse_json_object(o) for o in outputs]
    totals: Counter[str] = Counter()
    per_field: dict[str, Counter[str]] = {}
    for g, p in zip(gold, parsed):
        for path, c in field_counts(g, p).items():
            totals.update(c)
            per_field.setdefault(path, Counter()).update(c)
    n = len(targets)
    micro = prf(totals["tp"], totals["fp"], totals["fn"])
    return {
        "json_valid": sum(p is not None for p in parsed) / n if n else 0.0,
        "exact_match": sum(p is not None and flatten_fields(p) == flatten_fields(g) for g, p in zip(gold, parsed)) / n
        if n
        else 0.0,
        "field_precision": micro["precision"],
        "field_recall": micro["recall"],
        "field_f1": micro["f1"],
        "per_field": {path: _field_summary(c) for path, c in sorted(per_field.items())},
    }


def _field_summary(c: Counter[str]) -> dict[str, Any]:
    wrong = c["wrong"]
    return {
        **prf(c["tp"], c["fp"], c["fn"]),
        "support": c["tp"] + c["fn"],
        "missing": c["fn"] - wrong,
        "wrong": wrong,
        "spurious": c["fp"] - wrong,
    }


def extraction_score(target: str, output: str) -> float:
    """Field F1 of one example (1.0 when both objects are empty and the output is valid)."""
    parsed = parse_json_object(output)
    counts = field_counts(_target_object(target, 0), parsed)
    if parsed is not None and not counts:
        return 1.0
    tp, fp, fn = (sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn"))
    return prf(tp, fp, fn)["f1"]


def _target_object(text: str, index: int) -> dict[str, Any]:
    value = parse_json_object(text)
    if value is None:
        raise ValueError(f"target {index} is not a JSON object: {text[:60]!r}")
    return value


@cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(target: str, output: str) -> float:
    """ROUGE-L F-measure of one answer (``rouge-score``, Porter stemming), 0 to 1."""
    return float(_rouge().score(target, output)["rougeL"].fmeasure)


def generation_metrics(targets: Sequence[str], outputs: Sequence[str]) -> dict[str, Any]:
    """Exact match (after stripping), mean ROUGE-L F-measure (0 to 1) and corpus chrF (0 to 100)."""
    import sacrebleu

    n = len(targets)
    if not n:
        return {"exact_match": 0.0, "rougeL": 0.0, "chrf": 0.0}
    return {
        "exact_match": sum(t.strip() == o.strip() for t, o in zip(targets, outputs)) / n,
        "rougeL": statistics.fmean(rouge_l(t, o) for t, o in zip(targets, outputs)),
        "chrf": float(sacrebleu.corpus_chrf(list(outputs), [list(targets)]).score),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --- confidence: calibration and accuracy at coverage ------------------------------------------------------

CALIBRATION_BINS = 10
COVERAGES = (0.25, 0.5, 0.75, 0.9, 1.0)


def calibration(confidences: Sequence[float], correct: Sequence[bool]) -> dict[str, Any]:
    """How far the answers' probabilities are to be trusted: per confidence bin (tenths) the mean confidence and
    the accuracy (``bins``, the reliability diagram), their gap weighted by the bins' sizes (``ece``, expected
    calibration error), and the accuracy when only the most confident answers are given (``coverage``: the
    share answered, the confidence it takes, the accuracy of those)."""
    pairs = list(zip(confidences, correct, strict=True))
    bins = []
    for k in range(CALIBRATION_BINS):
        low, high = k / CALIBRATION_BINS, (k + 1) / CALIBRATION_BINS
        inside = [(c, ok) for c, ok in pairs if low <= c < high or (k == CALIBRATION_BINS - 1 and c == 1.0)]
        if inside:
            confidence = sum(c for c, _ in inside) / len(inside)
            accuracy = sum(ok for _, ok in inside) / len(inside)
            bins.append({"low": low, "high": high, "count": len(inside), "confidence": confidence,
                         "accuracy": accuracy})  # fmt: skip
    ece = sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in bins) / len(pairs) if pairs else 0.0
    ranked = sorted(pairs, key=lambda pair: -pair[0])
    coverage = []
    for share in COVERAGES:
        n = max(1, round(share * len(ranked))) if ranked else 0
        answered = ranked[:n]
        coverage.append({"coverage": share, "answered": n, "threshold": answered[-1][0] if answered else 1.0,
                         "accuracy": sum(ok for _, ok in answered) / n if n else 0.0})  # fmt: skip
    return {"ece": ece, "bins": bins, "coverage": coverage}
