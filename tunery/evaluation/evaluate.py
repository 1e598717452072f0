"""Evaluate one candidate (a model with a prompt): metrics, every prediction, error analysis, robustness.

``evaluate_engine`` runs a loaded model; ``Evaluation.save`` writes ``evaluation.json`` (metrics,
error analysis, robustness) and ``predictions.jsonl`` (one line per example) beside it, plus
``predictions-<perturbation>.jsonl`` for each perturbation.

What is evaluated is what is served: ``measured_weights`` says which weights forms an evaluation runs, by default
the form ``tunery serve`` holds on this machine, and fp32 beside it when that is another form (the evaluation's
``reference``, written to ``predictions-fp32.jsonl``): the report shows both scores and how many answers agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.data.formats import Example
from tunery.data.media import MediaSource
from tunery.errors import ConfigError, ModelError
from tunery.evaluation.analysis import error_analysis
from tunery.evaluation.perturb import perturb_example
from tunery.evaluation.prompts import Prompt, load_prompt
from tunery.evaluation.run import Prediction, predict_all, read_predictions, summarize, write_predictions
from tunery.evaluation.tasks import Task
from tunery.serving.gemini import GenerationConfig

if TYPE_CHECKING:
    from tunery.serving.engine import Engine

EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.jsonl"
PROMPT_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Candidate:
    """What is evaluated: a name for the table, a model (catalog id, model dir or tuned model), a prompt."""

    name: str
    model: str
    prompt: Prompt = field(default_factory=Prompt)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "prompt": self.prompt.to_dict()}


def data_source(data: str | Path) -> MediaSource:
    """Where an evaluation file's ``fileData`` paths resolve: its folder, and ``TUNERY_DATA_ROOT`` when set."""
    from tunery.settings import data_root

    return MediaSource(base=Path(data).expanduser().resolve().parent, root=data_root())


def parse_candidate(text: str) -> Candidate:
    """``NAME=MODEL`` or ``NAME=MODEL:PROMPT.yaml`` (the prompt file is read now)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ConfigError(f"--candidate {text!r}: expected NAME=MODEL or NAME=MODEL:PROMPT.yaml")
    model, colon, prompt_path = rest.rpartition(":")
    if colon and prompt_path.lower().endswith(PROMPT_SUFFIXES) and model:
        return Candidate(name.strip(), model, load_prompt(prompt_path))
    return Candidate(name.strip(), rest)


@dataclass
class Evaluation:
    """One candidate's results on one evaluation set."""

    candidate: Candidate
    task: Task
    data: str
    predictions: list[Prediction]
    summary: dict[str, Any]
    errors: dict[str, Any]
    robustness: dict[str, dict[str, Any]] = field(default_factory=dict)
    perturbed: dict[str, list[Prediction]] = field(default_factory=dict)
    weights: str = "fp32"  # the form the predictions were made with (``Engine.weights``)
    reference: Evaluation | None = None  # the same candidate in fp32, when ``weights`` is another form

    @property
    def quality(self) -> float:
        return float(self.summary[self.task.primary_metric])

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            "data": self.data,
            "task": self.task.to_dict(),
            "metrics": self.summary,
            "errorAnalysis": self.errors,
            "robustness": self.robustness,
            "weights": self.weights,
            **({"reference": self.reference_dict()} if self.reference is not None else {}),
        }

    def reference_dict(self) -> dict[str, Any]:
        """The fp32 reference's weights, metrics, and how many answers equal this evaluation's."""
        assert self.reference is not None
        same, total = agreement(self.predictions, self.reference.predictions)
        return {"weights": self.reference.weights, "metrics": self.reference.summary,
                "agreement": {"same": same, "examples": total}}  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_predictions(self.predictions, directory / PREDICTIONS_FILE)
        for name, predictions in self.perturbed.items():
            write_predictions(predictions, directory / f"predictions-{name}.jsonl")
        if self.reference is not None:
            write_predictions(self.reference.predictions, directory / f"predictions-{self.reference.weights}.jsonl")
        path = directory / EVALUATION_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def load_evaluation(directory: str | Path) -> Evaluation | None:
    """The evaluation stored in ``directory`` (a tuned model's, after tuning), or None."""
    directory = Path(directory)
    path = directory / EVALUATION_FILE
    if not path.is_file() or not (directory / PREDICTIONS_FILE).is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if "metrics" not in data:
        return None
    c, t = data["candidate"], data["task"]
    prompt = Prompt(name=c["prompt"]["name"], system=c["prompt"]["system"], template=c["prompt"]["template"])
    perturbed = {
        name: read_predictions(directory / f"predictions-{name}.jsonl")
        for name in data.get("robustness", {})
        if (directory / f"predictions-{name}.jsonl").is_file()
    }
    candidate, task = Candidate(c["name"], c["model"], prompt), Task(t["kind"], tuple(t["labels"]))
    reference = None
    found = data.get("reference")
    if found and (directory / f"predictions-{found['weights']}.jsonl").is_file():
        rows = read_predictions(directory / f"predictions-{found['weights']}.jsonl")
        reference = from_predictions(candidate, task, data["data"], rows, weights=found["weights"])
    return Evaluation(
        candidate=candidate,
        task=task,
        data=data["data"],
        predictions=read_predictions(directory / PREDICTIONS_FILE),
        summary=data["metrics"],
        errors=data["errorAnalysis"],
        robustness=data.get("robustness", {}),
        perturbed=perturbed,
        weights=data.get("weights", "fp32"),  # evaluations stored before the field were fp32's
        reference=reference,
    )


def from_predictions(
    candidate: Candidate,
    task: Task,
    data: str,
    predictions: list[Prediction],
    perturbed: dict[str, list[Prediction]] | None = None,
    weights: str = "fp32",
) -> Evaluation:
    """Metrics, error analysis and robustness computed from predictions already made (with ``weights``)."""
    summary = summarize(predictions, task)
    evaluation = Evaluation(candidate, task, data, predictions, summary, error_analysis(predictions, task))
    evaluation.weights = weights
    for name, rows in (perturbed or {}).items():
        evaluation.perturbed[name] = rows
        evaluation.robustness[name] = robustness(evaluation, rows)
    return evaluation


def robustness(clean: Evaluation, perturbed: Sequence[Prediction]) -> dict[str, Any]:
    """The primary metric on perturbed inputs, its drop from clean inputs, and answers the change broke."""
    metric = clean.task.primary_metric
    value = float(summarize(perturbed, clean.task)[metric])
    by_line = {p.line: p for p in perturbed}
    broken = sum(1 for p in clean.predictions if p.score == 1.0 and p.line in by_line and by_line[p.line].score < 1.0)
    return {"metric": metric, "clean": clean.quality, "perturbed": value, "drop": clean.quality - value,
            "broken": broken}  # fmt: skip


def restrict(evaluation: Evaluation, lines: Sequence[int]) -> Evaluation:
    """The same evaluation recomputed over the examples on ``lines`` only."""
    keep = set(lines)
    perturbed = {n: [p for p in rows if p.line in keep] for n, rows in evaluation.perturbed.items()}
    predictions = [p for p in evaluation.predictions if p.line in keep]
    e = evaluation
    restricted = from_predictions(e.candidate, e.task, e.data, predictions, perturbed, e.weights)
    if e.reference is not None:
        restricted.reference = restrict(e.reference, lines)
    return restricted


def agreement(predictions: Sequence[Prediction], others: Sequence[Prediction]) -> tuple[int, int]:
    """How many of the examples in both got the same answer, of how many."""
    by_line = {p.line: p.output for p in others}
    common = [p for p in predictions if p.line in by_line]
    return sum(p.output == by_line[p.line] for p in common), len(common)


def measured_weights(choice: str | None = None) -> tuple[str, ...]:
    """The weights forms an evaluation runs, the first being the one its report leads with: ``choice`` (default
    ``$TUNERY_EVALUATION_WEIGHTS``, else ``served``: the form ``tunery serve`` holds on this machine), then fp32
    beside any other form; ``fp32`` alone."""
    from tunery.serving.engine import resolve_weights, served_weights  # torch: only when a model runs
    from tunery.settings import EVALUATION_WEIGHTS, evaluation_weights

    choice = choice or evaluation_weights()
    if choice not in EVALUATION_WEIGHTS:
        raise ConfigError(f"weights {choice!r}: expected one of {', '.join(EVALUATION_WEIGHTS)}")
    form = served_weights() if choice == "served" else resolve_weights(choice)
    return (form,) if form == "fp32" else (form, "fp32")


def with_reference(evaluations: Sequence[Evaluation]) -> Evaluation:
    """The first form's evaluation, the fp32 one (if measured too) its ``reference``."""
    first, *rest = evaluations
    first.reference = next((e for e in rest if e.weights == "fp32" and first.weights != "fp32"), None)
    return first


@dataclass
class Events:
    """Progress callbacks (all optional): a candidate starts, a prediction is made, a candidate is done."""

    on_start: Callable[[str, int], None] = lambda name, total: None
    on_prediction: Callable[[str, Prediction], None] = lambda name, prediction: None
    on_done: Callable[[Evaluation], None] = lambda evaluation: None


def _relay(events: Events, label: str) -> Callable[[Prediction], None]:
    return lambda prediction: events.on_prediction(label, prediction)


def evaluate_engine(
    engine: Engine,
    examples: Sequence[Example],
    candidate: Candidate,
    task: Task,
    config: GenerationConfig,
    perturbations: Sequence[str] = (),
    seed: int = 0,
    data: str = "",
    events: Events | None = None,
    source: MediaSource | str | Path | None = None,
) -> Evaluation:
    """Run ``candidate`` (already loaded as ``engine``) over ``examples``, then over each perturbation. Media
    ``fileData`` paths resolve against ``source`` (default: the folder of ``data``, the examples' file)."""
    if source is None and data:
        source = data_source(data)
    events = events or Events()
    runs = [("", list(examples))] + [(n, [perturb_example(e, n, seed) for e in examples]) for n in perturbations]
    results: dict[str, list[Prediction]] = {}
    weights = getattr(engine, "weights", "fp32")
    for name, inputs in runs:
        label = ", ".join(x for x in (name, "" if weights == "fp32" else f"{weights} weights") if x)
        label = f"{candidate.name} ({label})" if label else candidate.name
        events.on_start(label, len(inputs))
        try:
            results[name] = predict_all(engine, inputs, candidate.prompt, task, config, _relay(events, label), source)
        except ModelError as exc:
            raise ModelError(f"candidate {candidate.name!r} ({candidate.model}): {exc}") from None
    clean = results.pop("")
    evaluation = from_predictions(candidate, task, data, clean, results, weights)
    events.on_done(evaluation)
    return evaluation
