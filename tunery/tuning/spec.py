"""``TuningSpec``: every setting of a tuning run, typed, checked, with its defaults in one place.

CLI options, SDK arguments and stored job specs all derive from this class. Names follow Vertex's
supervised tuning where one exists (``epochCount``, ``adapterSize``, ``learningRateMultiplier``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tunery.errors import ConfigError
from tunery.models.catalog import DEFAULT_MODEL, FULL, PEFT_ADAPTER

ADAPTER_SIZES = (1, 2, 4, 8, 16, 32)
PRECISIONS = ("auto", "fp32", "bf16-mixed")
HYPER_PARAMETERS = {
    "epochCount": "epochs",
    "learningRateMultiplier": "learning_rate_multiplier",
    "adapterSize": "adapter_size",
    "batchSize": "batch_size",
    "maxLength": "max_length",
    "seed": "seed",
}
"""REST ``hyperParameters`` names (Vertex's, plus ``batchSize``, ``maxLength``, ``seed``) → ``TuningSpec`` fields."""
METHODS = {"lora": PEFT_ADAPTER, "full": FULL, PEFT_ADAPTER.lower(): PEFT_ADAPTER, FULL.lower(): FULL}


@dataclass
class TuningSpec:
    """One supervised tuning run."""

    train: str
    """Path of the training JSONL (``trainingDatasetUri``)."""
    base_model: str = DEFAULT_MODEL
    """Catalog id or local Hugging Face model directory (``baseModel``)."""
    validation: str | None = None
    """Path of the validation JSONL (``validationDatasetUri``); evaluated at each epoch end."""
    method: str = PEFT_ADAPTER
    """``PEFT_ADAPTER`` (LoRA on all linear layers) or ``FULL`` (``tuningMode``); ``lora``/``full`` accepted."""
    epochs: int | None = None
    """Passes over the training data (``epochCount``); None picks it from the dataset size."""
    adapter_size: int = 8
    """LoRA rank (``adapterSize``): 1, 2, 4, 8, 16 or 32."""
    learning_rate_multiplier: float = 1.0
    """Times the base model's default learning rate for the method (``learningRateMultiplier``)."""
    batch_size: int = 8
    """Examples per optimizer step (``batchSize``); split into micro-batches by ``micro_batch_tokens``."""
    max_length: int = 1024
    """Tokens per example; longer examples are truncated and counted in the statistics (``maxLength``)."""
    seed: int = 0
    """Seeds data order and adapter initialisation; the same seed gives the same weights."""
    output: str | None = None
    """Tuned model directory; default ``$TUNERY_HOME/tuned-models/<id>``."""
    display_name: str | None = None
    """``tunedModelDisplayName``."""
    micro_batch_tokens: int = 4096
    """Most padded tokens in one forward pass; bounds memory, never changes the result (in fp32)."""
    precision: str = "auto"
    """``fp32``; ``bf16-mixed`` (bf16 matmuls, fp32 weights and optimizer state); ``auto``: bf16-mixed where
    the hardware computes bf16 fast (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else fp32."""
    checkpoint_seconds: float = 600.0
    """Training time between checkpoints inside an epoch (every epoch end is checkpointed too): the most
    work a killed run loses."""
    labels: dict[str, str] = field(default_factory=dict)
    """Free-form labels kept with the job."""

    def __post_init__(self) -> None:
        problems = []
        method = METHODS.get(str(self.method).lower())
        if method is None:
            problems.append(f"method {self.method!r}: expected PEFT_ADAPTER (lora) or FULL (full)")
        else:
            self.method = method
        if not self.train:
            problems.append("train: a training dataset is required")
        if self.adapter_size not in ADAPTER_SIZES:
            problems.append(f"adapterSize {self.adapter_size}: expected one of {', '.join(map(str, ADAPTER_SIZES))}")
        if self.epochs is not None and not 1 <= self.epochs <= 100:
            problems.append(f"epochCount {self.epochs}: expected 1 to 100")
        if not (0 < self.learning_rate_multiplier <= 100) or math.isnan(self.learning_rate_multiplier):
            problems.append(
                f"learningRateMultiplier {self.learning_rate_multiplier}: expected more than 0, at most 100"
            )
        if not 1 <= self.batch_size <= 1024:
            problems.append(f"batchSize {self.batch_size}: expected 1 to 1024")
        if not 16 <= self.max_length <= 131072:
            problems.append(f"maxLength {self.max_length}: expected 16 to 131072")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if not self.checkpoint_seconds > 0:
            problems.append(f"checkpoint_seconds {self.checkpoint_seconds}: expected more than 0")
        if self.micro_batch_tokens < 1:
            problems.append(f"micro_batch_tokens {self.micro_batch_tokens}: expected at least 1")
        if problems:
            raise ConfigError("invalid tuning spec: " + "; ".join(problems))

    @property
    def is_lora(self) -> bool:
        return self.method == PEFT_ADAPTER

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hyper_parameters(self) -> dict[str, Any]:
        """The REST ``hyperParameters`` of this spec (unset ones left out)."""
        values = {rest: getattr(self, name) for rest, name in HYPER_PARAMETERS.items()}
        return {rest: value for rest, value in values.items() if value is not None}

    def to_request(self) -> dict[str, Any]:
        """The REST ``POST /v1/tuningJobs`` body this spec corresponds to (datasets as their paths)."""
        tuning: dict[str, Any] = {"trainingDatasetUri": self.train, "hyperParameters": self.hyper_parameters()}
        if self.validation:
            tuning["validationDatasetUri"] = self.validation
        request = {"baseModel": self.base_model, "supervisedTuningSpec": tuning, "tuningMode": self.method}
        if self.display_name:
            request["tunedModelDisplayName"] = self.display_name
        return {**request, "labels": self.labels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuningSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown tuning spec field(s): {', '.join(unknown)}")
        return cls(**data)
