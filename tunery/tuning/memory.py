"""A run's peak memory, estimated before it loads any weight, and a refusal when the device cannot hold it.

The estimate counts, per process:

- weights: every parameter at its stored width (fp32; a LoRA base in bf16 on CUDA; NF4 ≈ 0.56 byte);
- gradients and AdamW state of the trainable parameters: 4 + 8 bytes each (fp32);
- activations kept for the backward pass at the largest micro-batch the data gives (padded or packed
  tokens), about (8·hidden + 5·intermediate) values per token and layer (SDPA/flash attention keep no
  sequence² scores), or one hidden vector per token and layer plus one layer's worth with gradient
  checkpointing;
- logits at the trained positions of that micro-batch (tunery computes no others), three copies;
- on CUDA, 0.5 GiB for the context and the allocator's slack.

Parameter counts come from the model's config on the ``meta`` device (nothing allocated). The estimate
is rough on purpose (±30 %); it exists to refuse a job that cannot fit with the numbers, before the
job spends minutes loading weights to die out of memory.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunery.data.tokenize import Encoded
from tunery.errors import ConfigError
from tunery.settings import device_memory_limit
from tunery.tuning.batching import micro_batches, plan_epoch

GIB = 2**30
CUDA_OVERHEAD = GIB // 2


@dataclass(frozen=True)
class Estimate:
    weights: int
    optimizer: int  # gradients and AdamW moments
    activations: int
    logits: int
    overhead: int
    tokens: int  # the largest micro-batch, in computed tokens

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations + self.logits + self.overhead

    def describe(self) -> str:
        parts = [
            f"weights {gib(self.weights)}",
            f"gradients and optimizer {gib(self.optimizer)}",
            f"activations {gib(self.activations)} at {self.tokens} tokens per micro-batch",
            f"logits {gib(self.logits)}",
        ]
        if self.overhead:
            parts.append(f"CUDA context {gib(self.overhead)}")
        return ", ".join(parts)


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def parameter_counts(model_dir: Path, lora_rank: int | None) -> tuple[int, int]:
    """(all parameters, trainable parameters) of the model in ``model_dir``, with LoRA adapters of ``lora_rank``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
    auto: Any = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM  # a VLM
    if hasattr(config, "audio_config") and not hasattr(config, "vision_config"):  # an audio-language model
        auto = AutoModelForMultimodalLM
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=False)
    total = sum(p.numel() for p in model.parameters())
    if lora_rank is None:
        return total, total
    head = model.get_output_embeddings()
    adapters = sum(
        lora_rank * (m.in_features + m.out_features)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )
    return total + adapters, adapters


def largest_micro_batch(
    train: list[Encoded], batch_size: int, token_budget: int, seed: int, packed: bool
) -> tuple[int, int]:
    """(computed tokens, trained tokens) of the largest micro-batch of the first epoch."""
    lengths = [len(e.input_ids) for e in train]
    tokens = trained = 0
    for step in plan_epoch(lengths, batch_size, seed, 0):
        for group in micro_batches(step, lengths, token_budget):
            size = sum(lengths[i] for i in group) if packed else max(lengths[i] for i in group) * len(group)
            tokens = max(tokens, size)
            trained = max(trained, sum(train[i].trained_tokens for i in group))
    return tokens, trained


def estimate(
    config: dict[str, Any],
    counts: tuple[int, int],
    tokens: int,
    trained: int,
    *,
    weight_bytes: float,
    activation_bytes: int,
    checkpointing: bool,
    cuda: bool,
) -> Estimate:
    total, trainable = counts
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    intermediate = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config.get("vocab_size") or 0)
    per_layer = (8 * hidden + 5 * intermediate) * activation_bytes
    if checkpointing:
        activations = tokens * (layers * hidden * activation_bytes + per_layer)
    else:
        activations = tokens * layers * per_layer
    return Estimate(
        weights=int((total - trainable) * weight_bytes + trainable * 4),
        optimizer=trainable * 12,
        activations=int(activations),
        logits=trained * vocab * 4 * 3,
        overhead=CUDA_OVERHEAD if cuda else 0,
        tokens=tokens,
    )


def per_shard(found: Estimate, config: dict[str, Any], processes: int, offloaded: bool) -> Estimate:
    """``found`` (a FULL run's, fp32) for one of ``processes`` FSDP shards: 1/N of the weights and of the gradients
    and optimizer state (none of either on the device when ``offloaded``), plus what is gathered whole at once:
    the root unit (embeddings) and one decoder layer, each with its gradients."""
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    intermediate = int(config.get("intermediate_size") or 4 * hidden)
    heads = int(config.get("num_attention_heads") or 1)
    kv = hidden * int(config.get("num_key_value_heads") or heads) // heads
    layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate
    gathered = 2 * 4 * (int(config.get("vocab_size") or 0) * hidden + layer)
    resident = 0 if offloaded else 1
    return dataclasses.replace(
        found,
        weights=resident * found.weights // processes + gathered,
        optimizer=resident * found.optimizer // processes,
    )


def device_memory(device: torch.device) -> tuple[int, str]:
    """Bytes a run may use on ``device`` and where that number comes from."""
    limit = device_memory_limit()
    if limit is not None:
        return limit, "TUNERY_DEVICE_MEMORY"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free memory of {device} ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory()), "the MPS recommended maximum"
    return cpu_memory(), "this machine's memory"


def cpu_memory() -> int:
    """Physical memory, or the cgroup's limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total


def check_fits(prep: Any, placement: Any, processes: int = 1, sharded: bool = False, offload: bool = False) -> Estimate:
    """Estimate the run's peak memory on its device; a ``ConfigError`` naming the numbers if it cannot fit.

    Several processes on one CPU share its memory (each holds a copy); on GPUs each has its own device.
    ``sharded`` (FSDP): each process holds 1/N of the weights, gradients and optimizer state, plus one decoder
    layer gathered whole with its gradients; ``offload`` keeps the shards in CPU memory, off the GPU.
    """
    import json

    spec = prep.spec
    config = json.loads((Path(prep.base.path) / "config.json").read_text())
    config = {**config, **config.get("text_config", {})}
    counts = parameter_counts(Path(prep.base.path), prep.adapter_size if spec.is_lora else None)
    tokens, trained = largest_micro_batch(
        prep.train, spec.batch_size, spec.micro_batch_tokens, spec.seed, placement.packing
    )
    cuda = placement.device.type == "cuda"
    if placement.quantize == "4bit":
        weight_bytes = 0.5625
    elif cuda and spec.is_lora and placement.precision == "bf16-mixed":
        weight_bytes = 2
    else:
        weight_bytes = 4
    found = estimate(
        config,
        counts,
        tokens,
        trained,
        weight_bytes=weight_bytes,
        activation_bytes=3 if placement.precision == "bf16-mixed" else 4,
        checkpointing=spec.gradient_checkpointing,
        cuda=cuda,
    )
    if sharded and processes > 1:
        found = per_shard(found, config, processes, offload and cuda)
    available, source = device_memory(placement.device)
    copies = processes if placement.device.type == "cpu" else 1
    if found.total * copies > available:
        each = f" per process, {processes} processes" if copies > 1 else ""
        raise ConfigError(
            f"this run needs about {gib(found.total * copies)} on {placement.device} ({found.describe()}{each}) "
            f"but {source} is {gib(available)}: lower batchSize, maxLength or the micro-batch tokens, "
            "turn on gradientCheckpointing, use PEFT_ADAPTER, or quantize 4bit on a GPU"
        )
    return found
