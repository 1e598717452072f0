"""``tunery demo``: the main job on the embedded defaults."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunery.cli._common import TrainingProgress, console, handle_errors
from tunery.cli.datasets import show_stats
from tunery.cli.evaluate import show_table
from tunery.data.validation import ValidationReport
from tunery.evaluation import Prediction
from tunery.models.catalog import DEFAULT_MODEL
from tunery.settings import tunery_home


@handle_errors
def demo(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Base model to tune."),
    workdir: Path = typer.Option(None, "--workdir", help="Where the report, predictions and the tuned model go."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Also evaluate the base model zero-shot."),
    limit: int = typer.Option(None, "--limit", help="Evaluate on the first N held-out tickets only."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default: from the dataset size)."),
) -> None:
    """Route support tickets: base model with the best prompt vs. a LoRA-tuned model, side by side."""
    workdir = workdir or tunery_home() / "demo" / time.strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    progress: TrainingProgress | None = None

    def on_stage(text: str) -> None:
        console.rule(text)

    total = {"n": 0}

    def on_report(name: str, report: ValidationReport, stats: dict, epochs: int | None) -> None:  # type: ignore[type-arg]
        console.print(f"{name}: {len(report.examples)} valid examples, {len(report.problems)} problems")
        show_stats(f"{name} statistics", stats, epochs)
        if name == "test":
            total["n"] = min(limit or len(report.examples), len(report.examples))

    def on_metrics(m: dict) -> None:  # type: ignore[type-arg]
        nonlocal progress
        if progress is None:
            progress = TrainingProgress().__enter__()
        progress.on_metrics(m)
        if m.get("step") == m.get("total_steps"):
            progress.__exit__(None)

    bars: dict[str, Progress] = {}

    def on_prediction(name: str, p: Prediction) -> None:
        if name not in bars:
            bars[name] = Progress(
                TextColumn("[bold]evaluating[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            bars[name].add_task("eval", total=total["n"])
            bars[name].start()
        bars[name].advance(bars[name].task_ids[0])

    from tunery.demo import Candidate, DemoEvents, comparison, run_demo  # torch: only when it runs

    def on_candidate(c: Candidate) -> None:
        if c.name in bars:
            bars.pop(c.name).stop()
        s, e = c.summary, c.evaluation
        if e is not None and e.reference is not None:  # the fp32 reference, measured after the served form
            r = e.reference_dict()
            console.print(
                f"{c.name}: accuracy {r['metrics']['accuracy']:.1%} in fp32 (the reference), "
                f"{r['agreement']['same']} of {r['agreement']['examples']} answers as with {e.weights} weights",
                highlight=False,
            )
            return
        weights = f", {e.weights} weights" if e is not None else ""
        console.print(
            f"{c.name}: accuracy {s['accuracy']:.1%}, {s['prompt_tokens_mean']:.0f} prompt tokens, "
            f"{s['latency_ms_mean']:.0f} ms per request{weights}",
            highlight=False,
        )

    events = DemoEvents(
        on_stage=on_stage,
        on_report=on_report,
        on_metrics=on_metrics,
        on_prediction=on_prediction,
        on_candidate=on_candidate,
    )
    candidates = run_demo(workdir, events, model=model, zero_shot=zero_shot, limit=limit, epochs=epochs)
    show_table(comparison(candidates), f"Support-ticket routing, {candidates[0].summary['examples']} held-out tickets")
    console.print(
        f"tuned model: {candidates[-1].model}\nreport: {workdir / 'report.html'}\n        {workdir / 'report.md'}\n"
        f"predictions and summary.json: {workdir}\n"
        f"demo took {time.perf_counter() - started:.0f} s",
        highlight=False,
    )
