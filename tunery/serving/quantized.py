"""Weights held for serving: fp32, bf16, and weight-only int8 and int4 linear layers (the model host's forms).

    dtype = prepare_weights(model, resolve_weights("auto"))   # in place; the dtype activations then have

``fp32`` is the reference (what ``transformers`` computes). ``bf16`` halves the bytes each step
reads; ``int8`` stores every linear layer's weight as int8 with one scale per output channel and multiplies
with ``torch._weight_int8pack_mm`` on bf16 activations (a quarter of the bytes: decoding at batch 1 on a CPU
is bound by reading the weights). ``int4`` keeps the grid a GGUF file's weights already lie on: a linear layer
whose weights are 4-bit in groups of 32 with a scale and an offset (Q4_1, dequantized) is held as exactly
those 4 bits (``torch._weight_int4pack_mm_for_cpu``), one whose weights are 8-bit in groups of 32 (Q8_0: the
default model's tied embedding and output layer) as two 4-bit halves of those 8 bits, anything else as int8
per channel; the only rounding left is bf16's, in the scales and the activations. ``auto`` picks int4 where
the CPU has AVX512-BF16 or AMX (and torch its int4 kernel), else fp32: on the default model, on the lean
decoder, it decoded at 5.45x the rate of fp32 ``generate`` against int8's 4.59x, and agreed with fp32 on 53 of
the demo's 80 free-text answers against int8's 40 and bf16's 53 (``benchmarks/serving.py``, one idle run).
"""

from __future__ import annotations

import torch
from torch import nn

from tunery.errors import ConfigError
from tunery.hardware import cpu_has_fast_bf16
from tunery.settings import SERVING_WEIGHTS


def resolve_weights(weights: str) -> str:
    """``auto`` becomes the fastest form this machine runs (int4, else int8, on a CPU with fast bf16; else fp32)."""
    if weights not in SERVING_WEIGHTS:
        raise ConfigError(f"weights {weights!r}: expected one of {', '.join(SERVING_WEIGHTS)}")
    if weights == "int4" and not int4_kernel_works():
        raise ConfigError("weights int4: this build of torch has no CPU int4 kernel (_weight_int4pack_mm_for_cpu)")
    if weights != "auto":
        return weights
    if not cpu_has_fast_bf16():
        return "fp32"
    return "int4" if int4_kernel_works() else "int8" if int8_kernel_works() else "fp32"


def int8_kernel_works() -> bool:
    try:
        x, w, s = torch.ones(1, 32, dtype=torch.bfloat16), torch.ones(8, 32, dtype=torch.int8), torch.ones(8)
        return bool(torch._weight_int8pack_mm(x, w, s.to(torch.bfloat16)).sum() == 256)
    except (RuntimeError, AttributeError):
        return False


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with one bf16 scale per output channel (symmetric, round to nearest)."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


GROUP = 32  # the block of GGUF's Q4_1 and Q8_0, and the int4 kernel's group size here


def int4_kernel_works() -> bool:
    try:
        q = torch.arange(16, dtype=torch.int32).repeat(16, 4)  # [16, 64]
        packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        scales = torch.stack([torch.ones(2, 16), torch.zeros(2, 16)], -1).to(torch.bfloat16)  # w = q - 8
        out = torch._weight_int4pack_mm_for_cpu(torch.ones(1, 64, dtype=torch.bfloat16), packed, GROUP, scales)
        return bool((out.float() == float(4 * sum(range(-8, 8)))).all())
    except (RuntimeError, AttributeError):
        return False


def _on_grid(weight: torch.Tensor, levels: torch.Tensor, tolerance: float = 1e-4) -> bool:
    """Whether ``weight`` equals its reconstruction from ``levels`` up to float rounding (relative to its range)."""
    return bool((weight - levels).abs().max() <= tolerance * weight.abs().max().clamp(min=1e-12))


def _pack4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit levels ``q`` [out, in] (0..15; weight = (q - 8) * scale + zero per group) in the kernel's layout."""
    scales = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)  # [in/32, out, 2]
    return torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1), scales


class Int4Linear(nn.Module):
    """A linear layer whose weight is held as 4-bit levels in groups of 32 (one or two halves; see ``grid``)."""

    packed0: torch.Tensor
    scales0: torch.Tensor
    packed1: torch.Tensor
    scales1: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, halves: list[tuple[torch.Tensor, torch.Tensor]], linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        for i, (packed, scales) in enumerate(halves):
            self.register_buffer(f"packed{i}", packed)
            self.register_buffer(f"scales{i}", scales)
        self.halves = len(halves)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    @staticmethod
    def grid(linear: nn.Linear) -> Int4Linear | None:
        """The layer as 4 bits where its weights lie on Q4_1's grid (groups of 32, 16 levels between the group's
        minimum and maximum), as two 4-bit halves where they lie on Q8_0's (groups of 32, levels -127..127 times
        one scale); None when on neither (or the input width is not a multiple of 32)."""
        weight = linear.weight.detach().float()
        out, width = weight.shape
        if width % GROUP:
            return None
        groups = weight.reshape(out, width // GROUP, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        step = ((high - low) / 15).clamp(min=1e-12)
        q = ((groups - low[..., None]) / step[..., None]).round().clamp(0, 15)
        if _on_grid(groups, q * step[..., None] + low[..., None]):
            halves = [_pack4(q.reshape(out, width), step, low + 8 * step)]
            return Int4Linear(halves, linear)
        step = (groups.abs().amax(-1) / 127).clamp(min=1e-12)
        q = (groups / step[..., None]).round().clamp(-128, 127)
        if not _on_grid(groups, q * step[..., None]):
            return None
        low4 = torch.remainder(q, 16)  # q = 16 * high4 + low4, high4 in -8..7
        high4 = (q - low4) / 16
        halves = [
            _pack4((high4 + 8).reshape(out, width), 16 * step, torch.zeros_like(step)),
            _pack4(low4.reshape(out, width), step, 8 * step),
        ]
        return Int4Linear(halves, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()  # the kernel reads rows as if contiguous
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed0, GROUP, self.scales0)
        if self.halves == 2:
            out = out + torch._weight_int4pack_mm_for_cpu(flat, self.packed1, GROUP, self.scales1)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def prepare_weights(model: nn.Module, weights: str) -> torch.dtype:
    """Convert ``model`` in place to ``weights`` (fp32, bf16, int8 or int4); the dtype its activations then have."""
    if weights == "fp32":
        return torch.float32
    if weights in ("int8", "int4"):
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear):  # from the fp32 weights: the grid is found before any rounding
                found: nn.Module | None = Int4Linear.grid(module) if weights == "int4" else None
                if found is None and module.in_features % 16 == 0:  # the int8 kernel's inner dimension
                    found = Int8Linear(module)
                if found is not None:
                    replace_module(model, name, found)  # else the layer stays a (bf16) nn.Linear
    model.to(torch.bfloat16)
    return torch.bfloat16


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` at the dotted ``name``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
