"""``tunery tune`` and ``tunery merge``.

``tunery tune`` takes the path every job takes (``sft.train``'s): the job is created in this machine's job store and
its worker started through the executor (``tunery.jobs.local``); the command follows the job's metrics on its
progress bar, prints the tuned model directory, and cancels the job on Ctrl-C. The datasets are checked first, so
their problems are reported by line before any job exists. Under torchrun or ``accelerate launch`` the launcher
owns the processes, and each trains in its own process.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import typer

from tunery import jobs
from tunery.cli._common import StopFlag, TrainingProgress, console, err_console, handle_errors
from tunery.errors import ConfigError, JobError, TuningCancelled
from tunery.jobs.local import TENANT, active_on, kill
from tunery.jobs.store import CODE_INTERNAL
from tunery.models.catalog import DEFAULT_MODEL
from tunery.settings import jobs_dir
from tunery.tuning.methods import method_named
from tunery.tuning.spec import TuningSpec


def run_as_helper(spec: TuningSpec, resume: bool) -> None:
    """A launcher's process other than 0: train alongside process 0 in the run directory it creates."""
    from tunery.tuning.methods import method_of
    from tunery.tuning.prepare import saved_spec

    run_dir = Path(spec.output or "").expanduser().resolve()
    if resume:
        spec = saved_spec(run_dir).computing_as(spec)
    try:
        method_of(spec).main(spec, run_dir, resume=resume)
    except TuningCancelled:
        raise typer.Exit(130) from None


_DEFAULT = TuningSpec(train="-")
POLL_SECONDS = 0.2  # how often the job's state and metrics are read
CANCEL_WAIT_SECONDS = 60.0  # after a cancel, how long the worker has to save its checkpoint and end


@handle_errors
def tune(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Catalog id or local model directory."),
    train: Path = typer.Option(None, "--train", help="Training JSONL (Gemini or OpenAI form)."),
    validation: Path = typer.Option(
        None, "--validation", help="Validation JSONL, evaluated each epoch (default: a held-out slice of --train)."
    ),
    auto_validation: bool = typer.Option(
        _DEFAULT.auto_validation,
        "--auto-validation/--no-auto-validation",
        help="Without --validation, hold out 10% of --train.",
    ),
    method: str = typer.Option(
        "lora",
        "--method",
        help="lora (supervised, LoRA adapter), full (supervised, every weight), dpo (preference pairs, LoRA adapter) "
        "or dpo-full (preference pairs, every weight).",
    ),
    beta: float = typer.Option(_DEFAULT.beta, "--beta", help="DPO: how far from the reference the model may move."),
    preference_loss: str = typer.Option(_DEFAULT.preference_loss, "--preference-loss", help="DPO: sigmoid or ipo."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default: from the data's shape)."),
    adapter_size: int = typer.Option(
        None, "--adapter-size", help="LoRA rank: 1, 2, 4, 8, 16, 32 (default: from the data's shape)."
    ),
    learning_rate_multiplier: float = typer.Option(
        None, "--learning-rate-multiplier", help="Times the model's default rate (default: from the data's shape)."
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
        _DEFAULT.train_projector,
        "--train-projector",
        help="Vision-language models: train the projector too (frozen by default).",
    ),
    train_vision: bool = typer.Option(
        _DEFAULT.train_vision,
        "--train-vision",
        help="Vision-language models: train the vision tower too (frozen by default).",
    ),
    fsdp: bool = typer.Option(
        _DEFAULT.fsdp, "--fsdp", help="Full tuning over --processes: shard weights and optimizer state (FSDP)."
    ),
    cpu_offload: bool = typer.Option(
        _DEFAULT.cpu_offload, "--cpu-offload", help="With --fsdp: keep the shards in CPU memory."
    ),
    allow_remote_media: bool = typer.Option(
        False, "--allow-remote-media", help="Fetch http(s):// media parts of the datasets (off: they are errors)."
    ),
) -> None:
    """Tune a base model (or a tuned model) with a LoRA adapter or full fine-tuning, on supervised examples or on
    preference pairs (DPO), as a job on this machine; Ctrl-C cancels it at a checkpoint that --resume continues."""
    launched = launched_as()
    compute: dict[str, Any] = {
        "device": device,
        "processes": launched[1] if launched and processes == 1 else processes,
        "gradient_checkpointing": gradient_checkpointing,
        "packing": packing,
        "fsdp": fsdp,
        "cpu_offload": cpu_offload,
    }
    if resume:
        if output is None:
            raise ConfigError("--resume needs --output: the directory of the run to continue")
        spec = TuningSpec(train="(saved)", output=str(output), **compute)
    else:
        if train is None:
            raise ConfigError("--train is required")
        chosen = method_named(method)
        spec = TuningSpec(
            train=str(train),
            base_model=model,
            validation=str(validation) if validation else None,
            method=chosen.weights,
            objective=chosen.objective,
            beta=beta,
            preference_loss=preference_loss,
            epochs=epochs,
            auto_validation=auto_validation,
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
            allow_remote_media=allow_remote_media,
            **compute,
        )
    if launched is not None:  # torchrun / accelerate launch own the processes: each one trains here
        if launched[0] == 0:
            tune_here(spec, resume)
            return
        if output is None:
            raise ConfigError("under torchrun or accelerate launch, --output is required (every process needs it)")
        run_as_helper(spec, resume)  # process 0 reports progress and the result
        return
    run_job(job_spec(spec, resume))


def checkpoint_lines(tuned_dir: str | None) -> list[str]:
    """The kept checkpoints of a tuned model and which one it is, with why (its ``tunery.json``)."""
    from tunery.models.tuned import is_tuned_dir, read_manifest

    if not tuned_dir or not is_tuned_dir(tuned_dir):
        return []
    manifest = read_manifest(tuned_dir)
    lines = []
    for kept in manifest.get("checkpoints") or []:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in kept["metrics"].items() if k.startswith("eval_"))
        lines.append(f"checkpoint {kept['name']} (epoch {kept['epoch']}): {shown or 'no validation'}")
    best = manifest.get("bestCheckpoint")
    if best:
        lines.append(f"tuned model = {best['name']}: {best['why']}")
    return lines


def launched_as() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) under torchrun or accelerate launch; torch is imported only then."""
    if "RANK" not in os.environ:
        return None
    from tunery.tuning.distributed import launcher_env

    return launcher_env()


def tune_here(spec: TuningSpec, resume: bool) -> None:
    """Process 0 of a launcher's run: train in this process (its peers are the launcher's other processes)."""
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


def job_spec(spec: TuningSpec, resume: bool) -> TuningSpec:
    """The job's spec, checked before any job is created: the run to resume (its saved spec on this call's
    devices), or a new run whose output is free and whose datasets have no problem (every one, by line)."""
    if resume:
        from tunery.tuning.prepare import saved_spec  # torch

        run_dir = Path(spec.output or "").expanduser().resolve()
        running = active_on(run_dir)
        if running is not None:
            raise JobError(
                f"job {running.id} is still running in {run_dir}; follow it with: tunery jobs watch {running.id}"
                f" (or stop it: tunery jobs cancel {running.id})"
            )
        resumed = saved_spec(run_dir).computing_as(spec)
        resumed.output = str(run_dir)
        return resumed
    spec.train = str(Path(spec.train).expanduser().resolve())
    spec.validation = str(Path(spec.validation).expanduser().resolve()) if spec.validation else None
    if spec.output:
        out = Path(spec.output).expanduser().resolve()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise JobError(
                f"{out} already exists and is not empty; pass --resume to continue its run, or choose another --output"
            )
        spec.output = str(out)
    for line in check_datasets(spec):
        err_console.print(line, highlight=False)
    return spec


def check_datasets(spec: TuningSpec) -> list[str]:
    """Raise DatasetError with every problem of the training and validation files (with the base model's
    tokenizer for a text model: lengths too; a vision-language model's media parts are checked by the job); return
    what the run will make of the data (its settings and why, its validation: ``tunery.tuning.prepare.plan``)."""
    from tunery.data.validation import read_examples
    from tunery.models.loading import is_multimodal, load_tokenizer
    from tunery.tuning.lineage import resolve_start
    from tunery.tuning.prepare import media_source, plan

    base = resolve_start(spec.base_model).base  # a tuned model: the base it sits on
    tokenizer = None if is_multimodal(base.path) else load_tokenizer(base.path)
    model_id = base.id if base.id == spec.base_model else spec.base_model
    reports = []
    for path in (spec.train, spec.validation):
        if path:
            report = read_examples(
                path,
                tokenizer=tokenizer,
                max_length=min(spec.max_length, base.context_length),
                model_id=model_id,
                modalities=base.modalities,
                media_source=media_source(spec, path),
                objective=spec.objective,
            )
            report.raise_for_errors()
            reports.append(report)
    if tokenizer is None or spec.objective != "SFT":  # a preference run keeps its given settings
        return []
    return plan(spec, reports[0].examples, reports[0].encoded).describe()


class JobFollower:
    """Follows an embedded job: its metrics feed the progress bar; Ctrl-C (or SIGTERM, SIGHUP) cancels it.

    After a cancel the worker saves a checkpoint at its next step and ends the job CANCELLED; if it has not within
    ``CANCEL_WAIT_SECONDS`` (or at a second Ctrl-C) it is killed, and the job ends CANCELLED from its last
    checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.signals = 0
        self.cancelled_at: float | None = None
        self.killed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> JobFollower:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, *_: Any) -> None:
        self.signals += 1

    def follow(self, job_id: str, progress: TrainingProgress) -> dict[str, Any]:
        """Feed ``progress`` until the job has ended; its resource at the end."""
        store = jobs.Store()
        after = 0
        while True:
            resource = jobs.read(job_id, store)  # first: the events read next then include the last ones
            while batch := store.events(TENANT, job_id, after):
                after = batch[-1]["id"]
                for event in batch:
                    if event["type"] == "metrics" and event.get("data"):
                        progress.on_metrics(event["data"])
            if resource["state"] in jobs.ENDED:
                return resource
            self._stop(job_id, store)
            time.sleep(POLL_SECONDS)

    def _stop(self, job_id: str, store: jobs.Store) -> None:
        if not self.signals or self.killed:
            return
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            err_console.print("[yellow]cancelling the job: it stops at the next step and saves a checkpoint…[/yellow]")
            jobs.cancel(job_id, store)
        elif self.signals > 1 or time.monotonic() - self.cancelled_at > CANCEL_WAIT_SECONDS:
            err_console.print("[yellow]stopping the worker now (its last checkpoint is kept)[/yellow]")
            self.killed = True
            kill(job_id, store)


def run_job(spec: TuningSpec) -> None:
    """Create the job in this machine's job store, start its worker through the executor, follow it to its end."""
    with JobFollower() as follower:
        resource = jobs.submit(spec, watch_parent=True)  # the job lives while this command follows it
        job_id = resource["name"].split("/")[-1]
        err_console.print(f"job {resource['name']} (tunery jobs get {job_id})", highlight=False)
        with TrainingProgress() as progress:
            resource = follower.follow(job_id, progress)
    out = resource.get("tunedModel", {}).get("model") or spec.output
    if resource["state"] == jobs.SUCCEEDED:
        for line in checkpoint_lines(out):
            err_console.print(line, highlight=False)
        console.print(f"tuned model: {out}", highlight=False)
        return
    if resource["state"] == jobs.CANCELLED:
        from tunery.tuning.checkpoint import latest_checkpoint

        checkpoint = latest_checkpoint(spec.output or "")
        err_console.print(f"[yellow]cancelled[/yellow]: {checkpoint or 'no checkpoint yet'}", highlight=False)
        err_console.print(f"continue with: tunery tune --resume --output {spec.output}", highlight=False)
        raise typer.Exit(130)
    error = resource.get("error") or {}
    err_console.print(f"[red]error:[/red] {error.get('message') or resource['state']}", highlight=False)
    if error.get("code") == CODE_INTERNAL:  # not the input's fault: the worker's log has the traceback
        err_console.print(f"worker log: {jobs_dir() / job_id / 'worker.log'}", highlight=False)
    raise typer.Exit(1)


@handle_errors
def merge(
    tuned_dir: Path = typer.Argument(..., help="A LoRA tuned model directory."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the standalone merged model."),
) -> None:
    """Fold a LoRA adapter into its base weights: a model that loads without PEFT."""
    from tunery.tuning import merge as merge_adapter

    console.print(f"merged model: {merge_adapter(tuned_dir, output)}", highlight=False)
