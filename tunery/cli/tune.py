"""``tunery tune`` and ``tunery merge``."""

from __future__ import annotations

from pathlib import Path

import typer

from tunery.cli._common import StopFlag, TrainingProgress, console, err_console, handle_errors
from tunery.errors import ConfigError, TuningCancelled
from tunery.models.catalog import DEFAULT_MODEL
from tunery.tuning.spec import TuningSpec

_DEFAULT = TuningSpec(train="-")


@handle_errors
def tune(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Catalog id or local model directory."),
    train: Path = typer.Option(None, "--train", help="Training JSONL (Gemini or OpenAI form)."),
    validation: Path = typer.Option(None, "--validation", help="Validation JSONL, evaluated each epoch."),
    method: str = typer.Option("lora", "--method", help="lora (PEFT_ADAPTER) or full (FULL)."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default: from the dataset size)."),
    adapter_size: int = typer.Option(_DEFAULT.adapter_size, "--adapter-size", help="LoRA rank: 1, 2, 4, 8, 16, 32."),
    learning_rate_multiplier: float = typer.Option(
        1.0, "--learning-rate-multiplier", help="Times the model's default rate."
    ),
    batch_size: int = typer.Option(_DEFAULT.batch_size, "--batch-size", help="Examples per optimizer step."),
    max_length: int = typer.Option(
        _DEFAULT.max_length, "--max-length", help="Tokens per example; longer ones are truncated."
    ),
    seed: int = typer.Option(_DEFAULT.seed, "--seed"),
    precision: str = typer.Option(_DEFAULT.precision, "--precision", help="auto, fp32 or bf16-mixed."),
    output: Path = typer.Option(None, "--output", "-o", help="Tuned model directory (default under $TUNERY_HOME)."),
    display_name: str = typer.Option(None, "--display-name", help="tunedModelDisplayName."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint."),
) -> None:
    """Tune a base model with a LoRA adapter or full fine-tuning; Ctrl-C saves a checkpoint."""
    if resume:
        if output is None:
            raise ConfigError("--resume needs --output: the directory of the run to continue")
        spec = TuningSpec(train="(saved)", output=str(output))
    else:
        if train is None:
            raise ConfigError("--train is required")
        spec = TuningSpec(
            train=str(train),
            base_model=model,
            validation=str(validation) if validation else None,
            method=method,
            epochs=epochs,
            adapter_size=adapter_size,
            learning_rate_multiplier=learning_rate_multiplier,
            batch_size=batch_size,
            max_length=max_length,
            seed=seed,
            output=str(output) if output else None,
            display_name=display_name,
            precision=precision,
        )
    stop = StopFlag().install()
    try:
        with TrainingProgress() as progress:
            from tunery.tuning import Hooks  # torch: only when it runs
            from tunery.tuning import tune as run_tuning

            tuned = run_tuning(spec, Hooks(on_metrics=progress.on_metrics, should_stop=stop), resume=resume)
    except TuningCancelled as exc:
        err_console.print(f"[yellow]{exc}[/yellow]: {exc.checkpoint}")
        err_console.print(f"continue with: tunery tune --resume --output {spec.output}")
        raise typer.Exit(130) from None
    console.print(f"tuned model: {tuned}", highlight=False)


@handle_errors
def merge(
    tuned_dir: Path = typer.Argument(..., help="A LoRA tuned model directory."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the standalone merged model."),
) -> None:
    """Fold a LoRA adapter into its base weights: a model that loads without PEFT."""
    from tunery.tuning import merge as merge_adapter

    console.print(f"merged model: {merge_adapter(tuned_dir, output)}", highlight=False)
