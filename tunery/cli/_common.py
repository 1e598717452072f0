"""What every command shares: the console, error handling, progress rendering."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunery import settings
from tunery.errors import DatasetError, TuneryError

# Written to a file or a pipe, rich would wrap tables at 80 columns and split every cell; a log
# keeps each row on one line instead. A terminal (or an explicit COLUMNS) keeps its own width.
PIPED_WIDTH = 160
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH)
err_console = Console(stderr=True, soft_wrap=True)  # a FILE:LINE: field: message line stays one line
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Print a ``TuneryError`` as a plain message (every problem for a dataset) and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DatasetError as exc:
            err_console.print(f"[red]error:[/red] {exc.args[0]}", highlight=False)
            for problem in exc.problems:
                err_console.print(str(problem), highlight=False, markup=False)
            raise typer.Exit(1) from None
        except TuneryError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


class StopFlag:
    """Set by Ctrl-C or SIGTERM; the training loop checks it at step boundaries and saves a checkpoint."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        err_console.print("[yellow]stopping at the next step; saving a checkpoint…[/yellow]")

    def __call__(self) -> bool:
        return self.requested


class LogLines:
    """Progress for a log: a live bar draws nothing into a file or a pipe until it ends, so where stderr is not a
    terminal a long step prints a plain line instead, at the start, then at most every ``TUNERY_PROGRESS_SECONDS``
    (default 30), and at the end."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.on = not err_console.is_terminal
        self.every = settings.progress_seconds()
        self.started = time.monotonic()
        self.last: float | None = None
        self.ended = False

    def __call__(self, done: int, total: int | None, info: str = "") -> None:
        if not self.on or self.ended:
            return
        now = time.monotonic()
        self.ended = total is not None and done >= total
        if self.last is not None and now - self.last < self.every and not self.ended:
            return
        self.last = now
        count = f"{done}/{total}" if total else str(done)
        line = f"{self.label}: {count}{'  ' + info if info else ''}  {now - self.started:.0f} s elapsed"
        err_console.print(line, highlight=False, markup=False)


class TrainingProgress:
    """A progress bar with loss, tokens/s and ETA, fed by the loop's metrics."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]tuning[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("tuning", total=None, info="")
        self.lines = LogLines("tuning step")

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def on_metrics(self, m: dict[str, Any]) -> None:
        if "eval_loss" in m:
            accuracy = next(n for n in ("eval_token_accuracy", "eval_rewards/accuracies") if n in m)  # SFT, DPO
            self.progress.console.print(
                f"epoch {m['epoch']:.0f}: eval_loss {m['eval_loss']:.4f}  {accuracy} {m[accuracy]:.3f}",
                highlight=False,
            )
        if "train_loss" not in m:
            return
        info = f"loss {m['train_loss']:.4f}  {m['tokens_per_second']:.0f} tok/s  ETA {m['eta_seconds']:.0f}s"
        self.progress.update(self.task, completed=m["step"], total=m["total_steps"], info=info)
        self.lines(m["step"], m["total_steps"], info)
