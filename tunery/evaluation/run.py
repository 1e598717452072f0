"""Run a model over evaluation examples with a prompt; keep every prediction and its cost."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.data.formats import Example
from tunery.data.media import MediaSource
from tunery.evaluation.metrics import calibration, percentile
from tunery.evaluation.prompts import Prompt
from tunery.evaluation.tasks import Task
from tunery.serving.gemini import GenerationConfig

if TYPE_CHECKING:
    from tunery.serving.engine import Engine

OUTPUT_MARGIN = 8  # tokens past the longest gold answer that a cheap evaluation lets the model write


@dataclass(frozen=True)
class Prediction:
    """One request: what was asked and expected, what came back, how good and how costly it was."""

    line: int
    input: str
    target: str
    output: str
    label: str | None
    score: float
    prompt_tokens: int
    output_tokens: int
    latency_ms: float
    finish_reason: str = "STOP"
    media: tuple[str, ...] = ()  # the MIME types of the prompt's media parts, in order (the report shows the first)
    confidence: float | None = None  # classification: the answer's probability (its tokens' logprobs summed)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prediction:
        names = {f.name for f in fields(cls)}
        found = {k: v for k, v in data.items() if k in names}
        if "media" in found:
            found["media"] = tuple(found["media"])
        return cls(**found)


def output_budget(engine: Engine, examples: Sequence[Example], margin: int = OUTPUT_MARGIN) -> GenerationConfig:
    """Greedy decoding with room for the longest gold answer (in the model's tokens) plus ``margin``."""
    longest = max((len(engine.tokenizer(e.target, add_special_tokens=False)["input_ids"]) for e in examples), default=0)
    return GenerationConfig(max_output_tokens=max(1, longest + margin))


def predict_all(
    engine: Engine,
    examples: Sequence[Example],
    prompt: Prompt,
    task: Task,
    config: GenerationConfig | None = None,
    on_prediction: Callable[[Prediction], None] = lambda p: None,
    source: MediaSource | str | Path | None = None,
) -> list[Prediction]:
    """One request per example, one at a time (latency as an endpoint would see it). Media parts go with the
    request, a ``fileData`` path read (against ``source``, the data file's folder) as the example comes up."""
    from tunery.serving.multimodal import inline_media

    config = config or GenerationConfig()
    if task.kind == "classification":  # the label's probability: for calibration and accuracy at coverage
        config = dataclasses.replace(config, response_logprobs=True)
    out = []
    for example in examples:
        result = engine.generate(prompt.apply(inline_media(example, source)), config)
        logprob = result.logprob
        prediction = Prediction(
            line=example.line,
            input=example.prompt().turns[-1].text,
            target=example.target,
            output=result.text,
            label=task.label_of(result.text),
            score=round(task.score(example.target, result.text), 4),
            prompt_tokens=result.prompt_tokens,
            output_tokens=result.output_tokens,
            latency_ms=round(result.latency_ms, 2),
            finish_reason=result.finish_reason,
            media=media_types(example),
            confidence=None if logprob is None else round(math.exp(logprob), 6),
        )
        on_prediction(prediction)
        out.append(prediction)
    return out


def media_types(example: Example) -> tuple[str, ...]:
    """The MIME types of the media parts of ``example``'s prompt, in order."""
    return tuple(p.mime_type for t in example.prompt().turns for p in t.parts if p.kind != "text")


def summarize(predictions: Sequence[Prediction], task: Task) -> dict[str, Any]:
    """The task's quality metrics, and tokens and latency per request (mean, p50, p95)."""
    latencies = [p.latency_ms for p in predictions]

    def mean(values: Sequence[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    summary: dict[str, Any] = {
        "task": task.kind,
        "examples": len(predictions),
        "exact_match": mean([p.output.strip() == p.target.strip() for p in predictions]),
    }
    summary.update(task.metrics([p.target for p in predictions], [p.output for p in predictions]))
    confidences = [p.confidence for p in predictions]
    if task.kind == "classification" and predictions and all(c is not None for c in confidences):
        summary["calibration"] = calibration([float(c) for c in confidences], [p.score == 1.0 for p in predictions])
    summary.update(
        {
            "prompt_tokens_mean": mean([p.prompt_tokens for p in predictions]),
            "output_tokens_mean": mean([p.output_tokens for p in predictions]),
            "latency_ms_mean": mean(latencies),
            "latency_ms_p50": percentile(latencies, 50),
            "latency_ms_p95": percentile(latencies, 95),
        }
    )
    return summary


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for p in predictions:
            fh.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def read_predictions(path: str | Path) -> list[Prediction]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Prediction.from_dict(json.loads(line)) for line in lines if line.strip()]
