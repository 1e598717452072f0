"""Where a run computes: the device (``auto`` takes CUDA when present), and what that device changes.

On CUDA a run gets bf16 where the GPU supports it, SDPA attention (flash-attention 2 when the
``flash_attn`` package is installed), padding-free packing by default, Liger kernels when
``liger-kernel`` is installed, and optionally QLoRA (``quantize="4bit"``: bitsandbytes NF4, bf16
compute). On the CPU everything stays as it was: fp32 weights, padded micro-batches, SDPA.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from tunery.errors import ConfigError, ModelError
from tunery.tuning.precision import resolve_precision
from tunery.tuning.spec import TuningSpec


@dataclass(frozen=True)
class Placement:
    """A run's resolved compute settings on one process."""

    device: torch.device
    precision: str  # fp32 or bf16-mixed
    packing: bool
    attention: str  # sdpa or flash_attention_2
    liger: bool
    quantize: str | None

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "packing": self.packing,
            "attention": self.attention,
            "liger": self.liger,
            "quantize": self.quantize,
        }


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when present, else the CPU; ``cuda`` with several processes: one GPU per local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device mps: no Apple GPU (MPS) is available to this torch build")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name}: no CUDA GPU is available (torch {torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    index = int(name.split(":")[1]) if ":" in name else 0
    index += local_rank
    if index >= count:
        raise ConfigError(f"device {name} (process {local_rank}): this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def place(spec: TuningSpec, local_rank: int = 0) -> Placement:
    """Resolve ``spec``'s compute settings for this process; refuses what the device cannot do, naming why."""
    device = resolve_device(spec.device, local_rank)
    cuda = device.type == "cuda"
    precision = spec.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "fp32") if cuda else resolve_precision("auto")
        if device.type == "mps":
            precision = "fp32"
    if spec.quantize:
        if not cuda:
            raise ConfigError(f"quantize {spec.quantize}: QLoRA needs a CUDA GPU (bitsandbytes); device is {device}")
        if not installed("bitsandbytes"):
            raise ModelError("quantize 4bit needs bitsandbytes: pip install 'tunery[gpu]'")
        precision = "bf16-mixed"
    packing = cuda if spec.packing is None else spec.packing
    attention = "flash_attention_2" if cuda and installed("flash_attn") else "sdpa"
    return Placement(device, precision, packing, attention, cuda and installed("liger_kernel"), spec.quantize)


def load_options(spec: TuningSpec, placement: Placement) -> dict[str, Any]:
    """``from_pretrained`` options for the base model on ``placement``.

    Full tuning keeps fp32 master weights (bf16 only inside autocast). LoRA on CUDA in bf16-mixed loads
    the frozen base in bf16 (half the memory, bf16 matmuls) while the adapters stay fp32; QLoRA loads
    it in NF4 with bf16 compute.
    """
    options: dict[str, Any] = {"attn_implementation": placement.attention}
    if placement.device.type != "cuda":
        return options
    if spec.is_lora and placement.precision == "bf16-mixed":
        options["dtype"] = torch.bfloat16
    if placement.quantize == "4bit":
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        options["device_map"] = {"": placement.device.index or 0}
    return options


def prepare_model(model: Any, spec: TuningSpec, placement: Placement) -> Any:
    """Move ``model`` to its device and apply the device's extras (Liger, k-bit preparation, checkpointing)."""
    if placement.liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # RMSNorm, SwiGLU and RoPE kernels; tunery computes its own loss on trained positions only.
        _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    if placement.quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    elif placement.device.type != "cpu":
        model = model.to(placement.device)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model
