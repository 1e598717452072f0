"""``tunery datasets``: validate a JSONL dataset and show its statistics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tunery.cli._common import console, err_console, handle_errors, print_json
from tunery.data.media import MediaSource
from tunery.data.stats import PreferenceTally, SupervisedTally, default_epochs, describe_media
from tunery.data.validation import ValidationReport, read_examples
from tunery.models.catalog import DEFAULT_MODEL
from tunery.models.loading import load_tokenizer
from tunery.models.sources import resolve_base
from tunery.tuning.spec import TuningSpec

app = typer.Typer(help="Check datasets and count their tokens.", no_args_is_help=True)

MODEL = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Base model whose tokenizer and template count the tokens.")
MAX_LENGTH = typer.Option(TuningSpec.max_length, "--max-length", help="Tokens per example before truncation.")


FILE = typer.Argument(..., help="The JSONL file; '-' reads standard input, and a pipe or FIFO works like a file.")
REMOTE = typer.Option(
    False, "--allow-remote-media", help="Fetch http(s):// media parts to check them (off: such parts are errors)."
)


def _read(path: Path, model: str, max_length: int, allow_remote: bool = False) -> ValidationReport:
    base = resolve_base(model)
    stdin = str(path) == "-"
    folder = Path.cwd() if stdin else path.expanduser().resolve().parent  # standard input: paths from here
    return read_examples(
        sys.stdin.buffer if stdin else path,
        name="<stdin>" if stdin else None,
        media_source=MediaSource(base=folder, allow_remote=allow_remote),
        tokenizer=load_tokenizer(base.path),
        max_length=min(max_length, base.context_length),
        model_id=model,
        modalities=base.modalities,
        objective=None,  # supervised examples or preference pairs, as the first line is
        keep=False,  # counted and tallied, not kept: memory flat in the file's size
    )


def _count(report: ValidationReport, adjective: str = "") -> str:
    """``11 examples`` or ``4 preference pairs`` (``adjective`` before the noun: ``11 valid examples``)."""
    pairs = report.objective == "DPO"
    n, noun = report.count, "preference pairs" if pairs else "examples"
    return f"{n} {adjective} {noun}" if adjective else f"{n} {noun}"


@app.command()
@handle_errors
def validate(
    file: Path = FILE, model: str = MODEL, max_length: int = MAX_LENGTH, allow_remote_media: bool = REMOTE
) -> None:
    """Report every problem as FILE:LINE: field: message; exit 1 if there is any error."""
    report = _read(file, model, max_length, allow_remote_media)
    for problem in report.problems:
        err_console.print(str(problem), highlight=False, markup=False)
    n_err, n_warn = len(report.errors), len(report.warnings)
    if n_err:
        err_console.print(f"[red]{report.path}: {n_err} error(s), {n_warn} warning(s); {_count(report, 'valid')}[/red]")
        raise typer.Exit(1)
    summary = f"{report.path}: OK, {_count(report)} ({n_warn} warning(s))"
    console.print(summary, highlight=False, soft_wrap=True)  # one line, however long the path


@app.command()
@handle_errors
def stats(
    file: Path = FILE,
    model: str = MODEL,
    epochs: int = typer.Option(
        None, "--epochs", help="Epochs to count billable tokens and steps for (default: automatic)."
    ),
    batch_size: int = typer.Option(TuningSpec.batch_size, "--batch-size"),
    max_length: int = MAX_LENGTH,
    as_json: bool = typer.Option(False, "--json", help="Print supervisedTuningDataStats as JSON."),
    allow_remote_media: bool = REMOTE,
) -> None:
    """Statistics in the shape of Vertex's supervisedTuningDataStats (preferenceOptimizationDataStats for pairs)."""
    report = _read(file, model, max_length, allow_remote_media)
    report.raise_for_errors()
    tally = report.tally or (PreferenceTally() if report.objective == "DPO" else SupervisedTally())
    epochs = epochs or default_epochs(report.count)
    if report.objective == "DPO":
        pairs = tally.stats(epochs, batch_size)
        if as_json:
            print_json({"preferenceOptimizationDataStats": pairs})
            return
        show_pair_stats(report.path, pairs, epochs)
        return
    data = tally.stats(epochs, batch_size)
    if as_json:
        print_json({"supervisedTuningDataStats": data})
        return
    show_stats(report.path, data, epochs)


def show_stats(name: str, data: dict[str, Any], epochs: int | None) -> None:
    """Print statistics; ``epochs`` None leaves out what depends on tuning (billable tokens, steps)."""
    tuning = (
        f"{data['totalBillableTokenCount']} billable tokens over {epochs} epochs, {data['tuningStepCount']} steps, "
    )
    console.print(
        f"[bold]{name}[/bold]: {data['tuningDatasetExampleCount']} examples, {tuning if epochs else ''}"
        f"{data['totalTruncatedExampleCount']} truncated",
        highlight=False,
    )
    rows = (("input (prompt)", "userInputTokenDistribution"), ("output (trained)", "userOutputTokenDistribution"))
    console.print(distribution_table("tokens per example", rows, data))
    for line in describe_media(data.get("mediaStats") or {}):
        console.print(line, highlight=False)


def show_pair_stats(name: str, data: dict[str, Any], epochs: int) -> None:
    """Print preference statistics: pairs, steps, truncated sides, prompt and answer token distributions."""
    console.print(
        f"[bold]{name}[/bold]: {data['tuningDatasetExampleCount']} preference pairs, "
        f"{data['totalBillableTokenCount']} billable tokens over {epochs} epochs, {data['tuningStepCount']} steps, "
        f"{data['totalTruncatedExampleCount']} truncated ({len(data['truncatedChosenExampleIndices'])} chosen, "
        f"{len(data['truncatedRejectedExampleIndices'])} rejected)",
        highlight=False,
    )
    rows = (
        ("prompt", "userInputTokenDistribution"),
        ("chosen answer", "chosenOutputTokenDistribution"),
        ("rejected answer", "rejectedOutputTokenDistribution"),
    )
    console.print(distribution_table("tokens per pair", rows, data))


def distribution_table(unit: str, rows: tuple[tuple[str, str], ...], data: dict[str, Any]) -> Table:
    """A row per (label, statistics key) of ``data``'s token distributions."""
    columns = ("sum", "min", "p5", "median", "mean", "p95", "max")
    table = Table(unit, *columns)
    for label, key in rows:
        table.add_row(label, *(f"{data[key][k]:g}" for k in columns))
    return table
