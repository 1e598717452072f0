"""Run a model over evaluation examples with a prompt; keep every prediction and its cost."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunery.data.formats import Example
from tunery.evaluation.metrics import classification_metrics, match_label, percentile
from tunery.evaluation.prompts import Prompt
from tunery.serving.engine import Engine, GenerationConfig


@dataclass(frozen=True)
class Prediction:
    line: int
    input: str
    target: str
    output: str
    label: str | None
    prompt_tokens: int
    output_tokens: int
    latency_ms: float


def predict_all(
    engine: Engine,
    examples: Sequence[Example],
    prompt: Prompt,
    labels: Sequence[str] = (),
    config: GenerationConfig | None = None,
    on_prediction: Callable[[Prediction], None] = lambda p: None,
) -> list[Prediction]:
    """One request per example, one at a time (latency as an endpoint would see it)."""
    out = []
    for example in examples:
        result = engine.generate(prompt.apply(example), config)
        prediction = Prediction(
            line=example.line,
            input=example.prompt().turns[-1].text,
            target=example.target,
            output=result.text,
            label=match_label(result.text, labels) if labels else None,
            prompt_tokens=result.prompt_tokens,
            output_tokens=result.output_tokens,
            latency_ms=round(result.latency_ms, 2),
        )
        on_prediction(prediction)
        out.append(prediction)
    return out


def summarize(predictions: Sequence[Prediction], labels: Sequence[str] = ()) -> dict[str, Any]:
    """Quality and cost per request; classification metrics when a label set is given."""
    latencies = [p.latency_ms for p in predictions]
    summary: dict[str, Any] = {
        "examples": len(predictions),
        "exact_match": statistics.fmean(p.output.strip() == p.target.strip() for p in predictions) if predictions else 0.0,
        "prompt_tokens_mean": statistics.fmean(p.prompt_tokens for p in predictions) if predictions else 0.0,
        "output_tokens_mean": statistics.fmean(p.output_tokens for p in predictions) if predictions else 0.0,
        "latency_ms_mean": statistics.fmean(latencies) if latencies else 0.0,
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p95": percentile(latencies, 95),
    }
    if labels:
        summary.update(classification_metrics([p.target for p in predictions], [p.label for p in predictions]))
    return summary


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> None:
    with Path(path).open("w") as fh:
        for p in predictions:
            fh.write(json.dumps(asdict(p)) + "\n")
