"""``tunery tune`` and ``tunery merge``."""

from __future__ import annotations

from pathlib import Path

import typer

from tunery.cli._common import StopFlag, TrainingProgress, console, err_console, handle_errors
from tunery.errors import ConfigError, TuningCancelled
from tunery.models.catalog import DEFAULT_MODEL
from tunery.tuning.spec import TuningSpec


def run_as_helper(spec: TuningSpec, resume: bool) -> None:
    """A launcher's process other than 0: train alongside process 0 in the run directory it creates."""
    from tunery.tuning import full, lora
    from tunery.tuning.prepare import saved_spec

    run_dir = Path(spec.output or "").expanduser().resolve()
    if resume:
        spec = saved_spec(run_dir).computing_as(spec)
    try:
        (lora if spec.is_lora else full).main(spec, run_dir, resume=resume)
    except TuningCancelled:
        raise typer.Exit(130) from None


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
    device: str = typer.Option(_DEFAULT.device, "--device", help="auto (CUDA when present), cpu, cuda, cuda:N, mps."),
    processes: int = typer.Option(
        _DEFAULT.processes, "--processes", help="Processes sharing each step (one per GPU; gloo on CPUs)."
    ),
    quantize: str = typer.Option(None, "--quantize", help="4bit: QLoRA (NF4 base, bitsandbytes, CUDA only)."),
    gradient_checkpointing: bool = typer.Option(
        _DEFAULT.gradient_checkpointing, "--gradient-checkpointing", help="Recompute activations: less memory."
    ),
    packing: bool = typer.Option(
        None, "--packing/--no-packing", help="Padding-free micro-batches (default: on CUDA only)."
    ),
    train_projector: bool = typer.Option(
        False, "--train-projector", help="Vision-language models: train the projector too (frozen by default)."
    ),
    train_vision: bool = typer.Option(
        False, "--train-vision", help="Vision-language models: train the vision tower too (frozen by default)."
    ),
) -> None:
    """Tune a base model with a LoRA adapter or full fine-tuning; Ctrl-C saves a checkpoint."""
    from tunery.tuning.distributed import launcher_env  # torch: only when it runs

    compute = {
        "device": device,
        "processes": launcher_env()[1] if launcher_env() and processes == 1 else processes,
        "gradient_checkpointing": gradient_checkpointing,
        "packing": packing,
    }
    if resume:
        if output is None:
            raise ConfigError("--resume needs --output: the directory of the run to continue")
        spec = TuningSpec(train="(saved)", output=str(output), **compute)
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
            quantize=quantize,
            train_projector=train_projector,
            train_vision=train_vision,
            **compute,
        )
    launched = launcher_env()
    if launched is not None and launched[0] != 0:
        if output is None:
            raise ConfigError("under torchrun or accelerate launch, --output is required (every process needs it)")
        run_as_helper(spec, resume)  # process 0 reports progress and the result
        return
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
