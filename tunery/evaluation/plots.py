"""The report's plots (matplotlib, no display needed): each function returns PNG bytes, or None when
there is nothing to draw.

- ``loss_curves``: training and validation loss of each tuned candidate, from its ``metrics.jsonl``;
- ``score_bars``: per-class (classification) or per-field (extraction) F1 bars, one colour per candidate;
- ``confusion_matrices``: one matrix per candidate (classification);
- ``overview``: quality, prompt tokens and latency per candidate, side by side;
- ``calibration``: confidence against accuracy, and accuracy at coverage (classification with label probabilities).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunery.evaluation.evaluate import Evaluation
from tunery.evaluation.metrics import NO_LABEL
from tunery.models.tuned import METRICS_FILE, is_tuned_dir

DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def read_metrics(model: str | Path) -> list[dict[str, Any]]:
    """A tuned model's logged steps; [] for a model that was not tuned by tunery."""
    path = Path(model) / METRICS_FILE
    if not is_tuned_dir(model) or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curves(evaluations: Sequence[Evaluation]) -> bytes | None:
    runs, seen = [], set()
    for e in evaluations:  # one pair of curves per tuned model, named after its first candidate
        rows = read_metrics(e.candidate.model) if e.candidate.model not in seen else []
        seen.add(e.candidate.model)
        if rows:
            runs.append((e.candidate.name, rows))
    if not runs:
        return None
    figure = _figure(7, 3.6)
    axes = figure.add_subplot()
    for name, rows in runs:
        train = [(m["step"], m["train_loss"]) for m in rows if "train_loss" in m]
        evals = [(m["step"], m["eval_loss"]) for m in rows if "eval_loss" in m]
        if train:
            axes.plot(*zip(*train), label=f"{name}: training loss", linewidth=1.2)
        if evals:
            axes.plot(*zip(*evals), marker="o", label=f"{name}: validation loss", linewidth=1.6)
    axes.set(xlabel="step", ylabel="loss", title="Tuning: training and validation loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _png(figure)


def score_bars(evaluations: Sequence[Evaluation]) -> bytes | None:
    """Grouped F1 bars per class or per field; None for generation."""
    key = {"classification": "per_class", "extraction": "per_field"}.get(
        evaluations[0].task.kind if evaluations else ""
    )
    if key is None:
        return None
    names = sorted({k for e in evaluations for k, v in e.summary[key].items() if v["support"]})
    if not names:
        return None
    figure = _figure(max(7.0, 0.55 * len(names) * max(1, len(evaluations)) + 2), 4.2)
    axes = figure.add_subplot()
    width = 0.8 / len(evaluations)
    for i, e in enumerate(evaluations):
        values = [e.summary[key].get(n, {}).get("f1", 0.0) for n in names]
        axes.bar([x + i * width - 0.4 + width / 2 for x in range(len(names))], values, width, label=e.candidate.name)
    axes.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    axes.set(ylim=(0, 1.05), ylabel="F1", title=f"F1 per {'class' if key == 'per_class' else 'field'}")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _png(figure)


def confusion_matrices(evaluations: Sequence[Evaluation]) -> bytes | None:
    """Targets down, predicted labels across (``<none>``: no label named); None unless classification."""
    if not evaluations or evaluations[0].task.kind != "classification":
        return None
    rows = [row for e in evaluations for row in e.summary["confusion"]]
    labels = sorted({row["target"] for row in rows} | set(evaluations[0].task.labels))
    columns = labels + ([NO_LABEL] if any(row["predicted"] == NO_LABEL for row in rows) else [])
    size = 1.6 + 0.38 * len(columns)
    figure = _figure(size * len(evaluations), size + 0.6)
    for i, e in enumerate(evaluations, start=1):
        counts = [[0] * len(columns) for _ in labels]
        for row in e.summary["confusion"]:
            if row["target"] in labels and row["predicted"] in columns:
                counts[labels.index(row["target"])][columns.index(row["predicted"])] = row["count"]
        axes = figure.add_subplot(1, len(evaluations), i)
        axes.imshow(counts, cmap="Blues", vmin=0)
        darkest = max(max(line) for line in counts) or 1
        for r, line in enumerate(counts):
            for c, n in enumerate(line):
                if n:
                    colour = "white" if n > darkest / 2 else "black"
                    axes.text(c, r, str(n), ha="center", va="center", fontsize=7, color=colour)
        axes.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
        axes.set_yticks(range(len(labels)), labels if i == 1 else [""] * len(labels), fontsize=7)
        axes.set_title(e.candidate.name, fontsize=9)
        axes.set_xlabel("predicted", fontsize=8)
    return _png(figure)


def overview(evaluations: Sequence[Evaluation]) -> bytes | None:
    if not evaluations:
        return None
    metric = evaluations[0].task.primary_metric
    names = [e.candidate.name for e in evaluations]
    panels = [
        (metric, [e.quality for e in evaluations]),
        ("prompt tokens / request", [e.summary["prompt_tokens_mean"] for e in evaluations]),
        ("latency p50 (ms)", [e.summary["latency_ms_p50"] for e in evaluations]),
    ]
    figure = _figure(10, 3.2)
    colours = [f"C{i}" for i in range(len(names))]
    for i, (title, values) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 3, i)
        axes.barh(range(len(names)), values, color=colours)
        axes.set_yticks(range(len(names)), names if i == 1 else [""] * len(names), fontsize=8)
        axes.invert_yaxis()
        axes.set_title(title, fontsize=9)
        axes.grid(axis="x", alpha=0.3)
        top = max(values, default=0.0)
        axes.set_xlim(0, 1.0 if i == 1 and top <= 1 else max(top * 1.05, 1.0))
    return _png(figure)


def calibration(evaluations: Sequence[Evaluation]) -> bytes | None:
    """Left: each confidence bin's accuracy against its mean confidence (the diagonal is a calibrated model);
    right: the accuracy when only the most confident share of the answers is given. None without confidences."""
    found = [(e.candidate.name, e.summary["calibration"]) for e in evaluations if "calibration" in e.summary]
    if not found:
        return None
    figure = _figure(10, 3.8)
    reliability, coverage = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    reliability.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for name, found_calibration in found:
        bins = found_calibration["bins"]
        reliability.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                         label=f"{name} (ECE {found_calibration['ece']:.3f})")  # fmt: skip
        points = found_calibration["coverage"]
        coverage.plot([c["coverage"] for c in points], [c["accuracy"] for c in points], marker="o", label=name)
    reliability.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (the label's probability)", ylabel="accuracy",
                    title="Calibration")  # fmt: skip
    coverage.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="coverage (share answered, most confident first)",
                 ylabel="accuracy of those answered", title="Accuracy at coverage")  # fmt: skip
    for axes in (reliability, coverage):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return _png(figure)


def all_plots(evaluations: Sequence[Evaluation]) -> dict[str, bytes]:
    """Every plot that applies, by file stem, in report order."""
    made = {
        "overview": overview(evaluations),
        "loss-curves": loss_curves(evaluations),
        "f1-bars": score_bars(evaluations),
        "confusion-matrices": confusion_matrices(evaluations),
        "calibration": calibration(evaluations),
    }
    return {name: png for name, png in made.items() if png is not None}
