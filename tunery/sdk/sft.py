"""Supervised fine-tuning, shaped like ``vertexai.tuning.sft``: ``sft.train(...)`` returns a ``TuningJob``;
``sft.train(..., method="dpo")`` tunes on preference pairs instead (DPO, ``beta``), by the same path.

Embedded, the job runs in a worker process on this machine. After ``tunery.init(...)`` it runs on the
server: local dataset files are uploaded first (``files/ID`` names pass through as they are), and
``source_model`` is a catalog id or a model directory the server can read.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tunery import jobs
from tunery.errors import ConfigError
from tunery.models.catalog import DEFAULT_MODEL, PEFT_ADAPTER
from tunery.sdk import client as remote
from tunery.sdk.jobs import TuningJob
from tunery.tuning.spec import TuningSpec


def train(
    source_model: str | Path = DEFAULT_MODEL,
    train_dataset: str | Path = "",
    validation_dataset: str | Path | None = None,
    *,
    tuning_mode: str = PEFT_ADAPTER,
    method: str = "sft",
    beta: float = TuningSpec.beta,
    epochs: int | None = None,
    adapter_size: int | None = None,
    learning_rate_multiplier: float | None = None,
    batch_size: int = TuningSpec.batch_size,
    max_length: int = TuningSpec.max_length,
    seed: int = TuningSpec.seed,
    precision: str = TuningSpec.precision,
    tuned_model_display_name: str | None = None,
    output_dir: str | Path | None = None,
    labels: dict[str, str] | None = None,
    auto_validation: bool = TuningSpec.auto_validation,
) -> TuningJob:
    """Start a tuning job and return at once; poll with ``job.refresh()``, follow with ``job.watch()``.

    ``method``: ``sft`` (supervised examples) or ``dpo`` (preference pairs, with ``beta``); ``tuning_mode`` says
    which weights either trains. ``source_model`` may be a tuned model (its directory or id) to tune further.
    ``epochs``, ``adapter_size`` and ``learning_rate_multiplier`` left out are chosen from the data's shape
    (``tunery.tuning.defaults``); without ``validation_dataset`` a stratified slice of the training data is held out
    to validate on (``tunery.tuning.split``; ``auto_validation=False``: none), and the tuned model is the best
    epoch's checkpoint on it.

    ``precision`` and ``output_dir`` are this machine's choices: a server makes its own, so they must be
    left at their defaults in remote mode.
    """
    spec = TuningSpec(
        train=str(train_dataset),
        base_model=str(source_model),
        validation=str(validation_dataset) if validation_dataset else None,
        method=tuning_mode,
        objective=method,
        beta=beta,
        epochs=epochs,
        adapter_size=adapter_size,
        learning_rate_multiplier=learning_rate_multiplier,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        precision=precision,
        display_name=tuned_model_display_name,
        output=str(output_dir) if output_dir else None,
        labels=labels or {},
        auto_validation=auto_validation,
    )
    client = remote.current()
    if client is not None:
        return _train_remote(client, spec)
    spec.train = str(Path(spec.train).resolve())
    spec.validation = str(Path(spec.validation).resolve()) if spec.validation else None
    spec.output = str(Path(spec.output).resolve()) if spec.output else None
    return TuningJob(jobs.submit(spec))


def _train_remote(client: remote.Client, spec: TuningSpec) -> TuningJob:
    """Upload the datasets, then create the job under one ``Idempotency-Key`` (a retry never makes two)."""
    if spec.output or spec.precision != "auto":
        raise ConfigError("output_dir and precision are chosen by the tunery server; leave them out in remote mode")
    body = spec.to_request()
    tuning = body.get("supervisedTuningSpec") or body["preferenceOptimizationSpec"]
    tuning["trainingDatasetUri"] = _dataset_uri(client, spec.train, spec)
    if spec.validation:
        tuning["validationDatasetUri"] = _dataset_uri(client, spec.validation, spec)
    return TuningJob(client.create_job(body, idempotency_key=uuid.uuid4().hex), client)


def _dataset_uri(client: remote.Client, dataset: str, spec: TuningSpec) -> str:
    """``files/ID`` as it is; a file on this machine uploaded (checked with the base model's tokenizer);
    anything else passed on, for the server to read under its data root."""
    if dataset.startswith("files/") or not Path(dataset).is_file():
        return dataset
    uploaded = client.upload_file(dataset, model=spec.base_model, max_length=spec.max_length)
    return uploaded["name"]


SupervisedTuningJob = TuningJob
