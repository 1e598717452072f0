"""Supervised fine-tuning, shaped like ``vertexai.tuning.sft``: ``sft.train(...)`` returns a ``TuningJob``."""

from __future__ import annotations

from pathlib import Path

from tunery import jobs
from tunery.models.catalog import DEFAULT_MODEL, PEFT_ADAPTER
from tunery.sdk.jobs import TuningJob
from tunery.tuning.spec import TuningSpec


def train(
    source_model: str = DEFAULT_MODEL,
    train_dataset: str | Path = "",
    validation_dataset: str | Path | None = None,
    *,
    tuning_mode: str = PEFT_ADAPTER,
    epochs: int | None = None,
    adapter_size: int = 8,
    learning_rate_multiplier: float = 1.0,
    batch_size: int = 8,
    max_length: int = 1024,
    seed: int = 0,
    precision: str = "auto",
    tuned_model_display_name: str | None = None,
    output_dir: str | Path | None = None,
    labels: dict[str, str] | None = None,
) -> TuningJob:
    """Start a tuning job in a worker process and return at once; poll with ``job.refresh()``."""
    spec = TuningSpec(
        train=str(Path(train_dataset).resolve()) if train_dataset else "",
        base_model=source_model,
        validation=str(Path(validation_dataset).resolve()) if validation_dataset else None,
        method=tuning_mode,
        epochs=epochs,
        adapter_size=adapter_size,
        learning_rate_multiplier=learning_rate_multiplier,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        precision=precision,
        display_name=tuned_model_display_name,
        output=str(Path(output_dir).resolve()) if output_dir else None,
        labels=labels or {},
    )
    return TuningJob(jobs.submit(spec))


SupervisedTuningJob = TuningJob
