"""``TuningSpec``: every setting of a tuning run, typed, checked, with its defaults in one place.

CLI options, SDK arguments and stored job specs all derive from this class. Names follow Vertex's
supervised tuning where one exists (``epochCount``, ``adapterSize``, ``learningRateMultiplier``).
"""

from __future__ import annotations

import dataclasses
import re
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
    "beta": "beta",
}
"""REST ``hyperParameters`` names (Vertex's, plus ``batchSize``, ``maxLength``, ``seed``) → ``TuningSpec`` fields."""
REST_NAMES = {name: rest for rest, name in HYPER_PARAMETERS.items()}
COMPUTE_CONFIG = {
    "device": "device",
    "processCount": "processes",
    "quantize": "quantize",
    "gradientCheckpointing": "gradient_checkpointing",
    "packing": "packing",
    "trainProjector": "train_projector",
    "trainVision": "train_vision",
    "fsdp": "fsdp",
    "cpuOffload": "cpu_offload",
}
"""REST ``computeConfig`` names (beside ``hyperParameters``) → ``TuningSpec`` fields: where and how a run computes.
All but ``quantize``, ``trainProjector`` and ``trainVision`` leave what it learns alone, so a run may
resume with others (``RESUMABLE_COMPUTE``)."""
RESUMABLE_COMPUTE = ("device", "processes", "gradient_checkpointing", "packing", "fsdp", "cpu_offload")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$")
QUANTIZE = ("4bit",)
MAX_PROCESSES = 64
TUNING_MODES = {"lora": PEFT_ADAPTER, "full": FULL, PEFT_ADAPTER.lower(): PEFT_ADAPTER, FULL.lower(): FULL}
SFT, DPO = "SFT", "DPO"
OBJECTIVES = (SFT, DPO)
"""Training objectives (``tunery.tuning.objectives``): supervised, and preference pairs."""
SIGMOID, IPO = "sigmoid", "ipo"
PREFERENCE_LOSSES = (SIGMOID, IPO)
"""DPO's losses (``tunery.tuning.losses.dpo_loss``)."""
RANGES: dict[str, tuple[int, int]] = {
    "epochs": (1, 100),
    "learning_rate_multiplier": (0, 100),
    "batch_size": (1, 1024),
    "max_length": (16, 131072),
    "seed": (0, 2**32 - 1),
    "beta": (0, 100),
}
"""``(least, most)`` of each numeric hyperparameter, by field; ``learning_rate_multiplier`` is a float and must be
more than its least, the others are whole numbers. The API schema derives its bounds from here."""
ABOVE_LEAST = ("learning_rate_multiplier", "beta")
PEFT_ADAPTER_ONLY = ("adapter_size",)
"""Hyperparameters that mean nothing to ``FULL`` tuning: a request that sets one for it is refused."""


def range_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the hyperparameter ``name`` (a ``RANGES`` field), or None."""
    if value is None:
        return None
    least, most = RANGES[name]
    rest = REST_NAMES[name]
    if name in ABOVE_LEAST:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and least < value <= most
        return None if ok else f"{rest} {value!r}: expected more than {least}, at most {most}"
    ok = isinstance(value, int) and not isinstance(value, bool) and least <= value <= most
    return None if ok else f"{rest} {value!r}: expected a whole number from {least} to {most}"


@dataclass
class TuningSpec:
    """One supervised tuning run."""

    train: str
    """Path of the training JSONL (``trainingDatasetUri``)."""
    base_model: str = DEFAULT_MODEL
    """Catalog id or local Hugging Face model directory (``baseModel``)."""
    validation: str | None = None
    """Path of the validation JSONL (``validationDatasetUri``); evaluated at each epoch end. None: a stratified
    slice of the training data is held out instead (``auto_validation``, ``tunery.tuning.split``)."""
    auto_validation: bool = True
    """Without ``validation``, hold out a stratified slice of the training data to validate on (REST:
    ``autoValidation``; ``tunery tune --no-auto-validation``); a file of fewer than 40 examples is never split."""
    method: str = PEFT_ADAPTER
    """``PEFT_ADAPTER`` (LoRA on all linear layers) or ``FULL`` (``tuningMode``); ``lora``/``full`` accepted."""
    objective: str = "SFT"
    """``SFT`` (supervised: next-token loss on the model's turns; ``supervisedTuningSpec``) or ``DPO`` (preference
    pairs; ``preferenceOptimizationSpec``). ``tunery.tuning.methods`` pairs it with ``method``."""
    beta: float = 0.1
    """DPO: how far the tuned model may move from the reference (smaller: further); Vertex's and TRL's ``beta``."""
    preference_loss: str = "sigmoid"
    """DPO's loss: ``sigmoid`` (the DPO paper's) or ``ipo`` (Azar et al.: squared, on per-token log-probabilities)."""
    epochs: int | None = None
    """Passes over the training data (``epochCount``); None: from the data's shape (``tunery.tuning.defaults``)."""
    adapter_size: int | None = None
    """LoRA rank (``adapterSize``): 1, 2, 4, 8, 16 or 32; None: from the data's shape."""
    learning_rate_multiplier: float | None = None
    """Times the base model's default learning rate for the method (``learningRateMultiplier``); None: from the
    data's shape."""
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
    device: str = "auto"
    """``auto`` (a CUDA GPU when present, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    processes: int = 1
    """Processes that share each optimizer step (``processCount``): data parallel, one per GPU, or over gloo
    on CPUs; the global batch, the loss and the checkpoints are those of one process."""
    quantize: str | None = None
    """``4bit``: QLoRA, the frozen base in NF4 (bitsandbytes, CUDA only) with bf16 compute; PEFT_ADAPTER only."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass: less memory, about a third more compute."""
    packing: bool | None = None
    """Padding-free micro-batches: examples end to end with their own position ids, no attention across
    examples, the same loss; None packs on CUDA only."""
    train_projector: bool = False
    """Vision-language models: train the projector between the media tower and the language model (frozen by
    default); LoRA keeps it whole in the adapter."""
    train_vision: bool = False
    """Vision-language models: train the media (vision) tower too (frozen by default): LoRA on its linear layers,
    every weight under FULL."""
    fsdp: bool = False
    """``FULL`` over several processes: shard the weights, gradients and optimizer state across them (torch FSDP,
    full shard) rather than hold a copy in each, for a model that does not fit one device; the same result.
    (A run resumed from its directory gets its method there, so the FULL-only check is the run's, not here.)"""
    cpu_offload: bool = False
    """With ``fsdp``: keep the shards and the optimizer step in CPU memory, on the GPU only while used."""
    allow_remote_media: bool = False
    """Fetch ``http(s)://`` media parts of the datasets (``--allow-remote-media``; off: such a part is an error at its
    line). Each fetch is bounded in size (``tunery.data.media``)."""
    uploaded_media: str | None = None
    """The folder where the datasets' ``fileData`` ``files/{id}`` parts resolve (``{id}`` a file in it): a server
    job's own links to the uploaded media its datasets name. None: uploaded file ids are not known here."""

    def __post_init__(self) -> None:
        problems = []
        method = TUNING_MODES.get(str(self.method).lower())
        if method is None:
            problems.append(f"method {self.method!r}: expected PEFT_ADAPTER (lora) or FULL (full)")
        else:
            self.method = method
        if not self.train:
            problems.append("train: a training dataset is required")
        self.objective = str(self.objective).upper()
        if self.objective not in OBJECTIVES:
            problems.append(f"objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if self.preference_loss not in PREFERENCE_LOSSES:
            problems.append(f"preferenceLoss {self.preference_loss!r}: expected one of {', '.join(PREFERENCE_LOSSES)}")
        if self.adapter_size is not None and self.adapter_size not in ADAPTER_SIZES:
            problems.append(f"adapterSize {self.adapter_size}: expected one of {', '.join(map(str, ADAPTER_SIZES))}")
        problems += [problem for name in RANGES if (problem := range_problem(name, getattr(self, name)))]
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if not self.checkpoint_seconds > 0:
            problems.append(f"checkpoint_seconds {self.checkpoint_seconds}: expected more than 0")
        if self.micro_batch_tokens < 1:
            problems.append(f"micro_batch_tokens {self.micro_batch_tokens}: expected at least 1")
        if not isinstance(self.device, str) or not DEVICE.match(self.device):
            problems.append(f"device {self.device!r}: expected auto, cpu, cuda, cuda:N or mps")
        if not isinstance(self.processes, int) or not 1 <= self.processes <= MAX_PROCESSES:
            problems.append(f"processCount {self.processes!r}: expected 1 to {MAX_PROCESSES}")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            problems.append(f"quantize {self.quantize!r}: expected 4bit or none")
        elif self.quantize and method == FULL:
            problems.append("quantize 4bit: quantized weights cannot be tuned in full; use PEFT_ADAPTER (QLoRA)")
        if self.cpu_offload and not self.fsdp:
            problems.append("cpuOffload: offloads FSDP shards; set fsdp too")
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
        if self.objective == "SFT":
            values.pop("beta")  # DPO's alone
        return {rest: value for rest, value in values.items() if value is not None}

    def compute_config(self) -> dict[str, Any]:
        """The REST ``computeConfig`` of this spec (values left at their default left out)."""
        fields = TuningSpec.__dataclass_fields__
        values = {rest: getattr(self, name) for rest, name in COMPUTE_CONFIG.items()}
        return {rest: v for rest, v in values.items() if v != fields[COMPUTE_CONFIG[rest]].default}

    def computing_as(self, other: TuningSpec) -> TuningSpec:
        """This run with ``other``'s devices, process count, checkpointing and packing (a resume may change them)."""
        return dataclasses.replace(self, **{name: getattr(other, name) for name in RESUMABLE_COMPUTE})

    def to_request(self) -> dict[str, Any]:
        """The REST ``POST /v1/tuningJobs`` body this spec corresponds to (datasets as their paths)."""
        tuning: dict[str, Any] = {"trainingDatasetUri": self.train, "hyperParameters": self.hyper_parameters()}
        if self.compute_config():
            tuning["computeConfig"] = self.compute_config()
        if self.validation:
            tuning["validationDatasetUri"] = self.validation
        if not self.auto_validation:
            tuning["autoValidation"] = False
        key = "supervisedTuningSpec" if self.objective == "SFT" else "preferenceOptimizationSpec"
        request = {"baseModel": self.base_model, key: tuning, "tuningMode": self.method}
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
