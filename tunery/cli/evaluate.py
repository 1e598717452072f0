"""``tunery evaluate``, ``tunery compare`` and ``tunery advise``: thin commands over ``tunery.sdk.evaluation``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunery.cli._common import LogLines, console, handle_errors, print_json
from tunery.evaluation import Comparison, Evaluation, Events, Prediction
from tunery.sdk.evaluation import EvaluationRun
from tunery.sdk.evaluation import advise as run_advise
from tunery.sdk.evaluation import compare as run_compare
from tunery.sdk.evaluation import evaluate as run_evaluate

TASK_HELP = "auto (inferred from the answers), classification, extraction or generation."
PERTURB_HELP = "Also evaluate on perturbed inputs and report the drop: any of typos,case,whitespace."
TRAIN_HELP = "Training file: data advice (duplicates, conflicts, imbalance, coverage) and the label set."
INPUT_PRICE_HELP = "Dollars per million prompt tokens, for the cost column (default 0.15)."
OUTPUT_PRICE_HELP = "Dollars per million output tokens, for the cost column (default 0.60)."
CONSTRAIN_HELP = (
    "Constrained decoding: 'labels' (answers restricted to the label set seen in training), 'none' (free text) "
    "or 'schema=FILE' (a JSON file holding a responseSchema). Default: a tuned model's kept label set or answer "
    "schema (tunery.json), else free text."
)
MAX_TOKENS_HELP = "maxOutputTokens (default: the longest expected answer plus 8 tokens)."
WEIGHTS_HELP = (
    "Weights measured: served (the form `tunery serve` holds on this machine; $TUNERY_SERVING_WEIGHTS), fp32 "
    "(alone), auto, bf16, int8 or int4; any form but fp32 is measured beside fp32 and both scores are reported. "
    "Default: $TUNERY_EVALUATION_WEIGHTS, else served."
)


class ProgressEvents:
    """One progress bar per candidate (and per perturbation), one line per finished candidate."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.lines: LogLines | None = None

    def events(self) -> Events:
        return Events(on_start=self.on_start, on_prediction=self.on_prediction, on_done=self.on_done)

    def on_start(self, name: str, total: int) -> None:
        self.stop()
        self.progress = Progress(
            TextColumn(f"[bold]{name}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        self.progress.add_task(name, total=total)
        self.progress.start()
        self.lines = LogLines(f"{name}: examples answered")
        self.lines(0, total)

    def on_prediction(self, name: str, prediction: Prediction) -> None:
        if self.progress is not None and self.lines is not None:
            task = self.progress.tasks[0]
            self.progress.advance(task.id)
            self.lines(int(task.completed), int(task.total or 0))

    def on_done(self, evaluation: Evaluation) -> None:
        self.stop()
        s = evaluation.summary
        metric = evaluation.task.primary_metric
        console.print(
            f"{evaluation.candidate.name}: {metric} {s[metric]:.3f}, {s['prompt_tokens_mean']:.0f} prompt tokens, "
            f"{s['latency_ms_p50']:.0f} ms per request (p50), {evaluation.weights} weights",
            highlight=False,
        )

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def show_table(comparison: Comparison, title: str) -> None:
    headers, rows = comparison.table()
    forms = {e.weights for e in comparison.evaluations}
    if "weights" not in headers and len(forms) == 1:
        title = f"{title}, {forms.pop()} weights"
    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def show_files(run: EvaluationRun) -> None:
    console.print(f"report: {run.files.html}\n        {run.files.markdown}\nfiles:  {run.output}", highlight=False)
    advice = run.comparison.advice
    if advice:
        console.print(f"data advice for {advice['train']}:", highlight=False)
        for line in advice["advice"]:
            console.print(f"  - {line}", highlight=False, markup=False)


@handle_errors
def evaluate(
    model: str = typer.Argument(..., help="Catalog id, local model directory or tuned model directory."),
    data: Path = typer.Option(..., "--data", help="Evaluation JSONL (Gemini or OpenAI form; last turn: the answer)."),
    prompt: Path = typer.Option(None, "--prompt", help="Prompt YAML: system, template, shots, shots_file."),
    task: str = typer.Option("auto", "--task", help=TASK_HELP),
    output: Path = typer.Option(None, "--output", "-o", help="Where the report goes (default under $TUNERY_HOME)."),
    perturb: str = typer.Option(None, "--perturb", help=PERTURB_HELP),
    train: Path = typer.Option(None, "--train", help=TRAIN_HELP),
    input_price: float = typer.Option(None, "--input-price", help=INPUT_PRICE_HELP),
    output_price: float = typer.Option(None, "--output-price", help=OUTPUT_PRICE_HELP),
    max_tokens: int = typer.Option(None, "--max-tokens", help=MAX_TOKENS_HELP),
    limit: int = typer.Option(None, "--limit", help="Evaluate the first N examples only."),
    seed: int = typer.Option(0, "--seed", help="Seed of the perturbations."),
    json_output: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of a table."),
    constrain: str = typer.Option(None, "--constrain", help=CONSTRAIN_HELP),
    weights: str = typer.Option(None, "--weights", help=WEIGHTS_HELP),
) -> None:
    """Evaluate one model: task metrics, tokens and latency per request, every prediction in a JSONL."""
    progress = ProgressEvents()
    try:
        run = run_evaluate(
            model, data, prompt, task=task, output=output, perturb=perturb, train=train, input_price=input_price,
            output_price=output_price, max_output_tokens=max_tokens, limit=limit, seed=seed, events=progress.events(),
            constrain=constrain, weights=weights,
        )  # fmt: skip
    finally:
        progress.stop()
    if json_output:
        print_json(run.comparison.evaluations[0].to_dict())
        return
    show_table(run.comparison, f"{model} on {data} ({run.comparison.task.kind})")
    show_files(run)


@handle_errors
def compare(
    data: Path = typer.Option(..., "--data", help="Evaluation JSONL; every candidate answers the same examples."),
    candidate: list[str] = typer.Option(
        ..., "--candidate", "-c", help="NAME=MODEL or NAME=MODEL:PROMPT.yaml; repeat for each candidate."
    ),
    task: str = typer.Option("auto", "--task", help=TASK_HELP),
    output: Path = typer.Option(None, "--output", "-o", help="Where the report goes (default under $TUNERY_HOME)."),
    perturb: str = typer.Option(None, "--perturb", help=PERTURB_HELP),
    train: Path = typer.Option(None, "--train", help=TRAIN_HELP + " Default: a tuned candidate's training file."),
    input_price: float = typer.Option(None, "--input-price", help=INPUT_PRICE_HELP),
    output_price: float = typer.Option(None, "--output-price", help=OUTPUT_PRICE_HELP),
    max_tokens: int = typer.Option(None, "--max-tokens", help=MAX_TOKENS_HELP),
    limit: int = typer.Option(None, "--limit", help="Evaluate the first N examples only."),
    seed: int = typer.Option(0, "--seed", help="Seed of the perturbations."),
    constrain: str = typer.Option(None, "--constrain", help=CONSTRAIN_HELP),
    weights: str = typer.Option(None, "--weights", help=WEIGHTS_HELP),
) -> None:
    """Compare models and prompts on the same examples; writes an HTML and a Markdown report, prints the table."""
    progress = ProgressEvents()
    try:
        run = run_compare(
            data, candidate, task=task, output=output, perturb=perturb, train=train, input_price=input_price,
            output_price=output_price, max_output_tokens=max_tokens, limit=limit, seed=seed, events=progress.events(),
            constrain=constrain, weights=weights,
        )  # fmt: skip
    finally:
        progress.stop()
    show_table(run.comparison, f"{data} ({run.comparison.task.kind}, {len(run.comparison.evaluations)} candidates)")
    show_files(run)


@handle_errors
def advise(
    train: Path = typer.Argument(..., help="Training JSONL."),
    prompts: Path = typer.Option(
        None, "--prompts", help="Evaluation or production prompts (JSONL; answers optional) to measure coverage of."
    ),
    model: str = typer.Option(None, "--model", "-m", help="Model whose tokenizer checks truncation."),
    max_length: int = typer.Option(1024, "--max-length", help="Tokens per example in training."),
    json_output: bool = typer.Option(False, "--json", help="Print every finding as JSON."),
) -> None:
    """Data advice for a training file: duplicates, conflicting labels, imbalance, truncation, coverage."""
    advice = run_advise(train, prompts, model=model, max_length=max_length)
    if json_output:
        print_json(advice)
        return
    console.print(f"{train}: {advice['examples']} examples", highlight=False)
    for line in advice["advice"]:
        console.print(f"  - {line}", highlight=False, markup=False)
    coverage = advice["coverage"]
    if coverage:
        console.print(
            f"distance to the nearest training prompt: median {coverage['distance_median']:.3f}, "
            f"p95 {coverage['distance_p95']:.3f}; least covered:",
            highlight=False,
        )
        for row in coverage["least_covered"]:
            console.print(f"  line {row['line']} ({row['distance']:.3f}): {row['input'][:100]}", highlight=False,
                          markup=False)  # fmt: skip
