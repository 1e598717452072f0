"""Numeric precision of a run: fp32, or bf16 matmuls over fp32 weights and optimizer (bf16-mixed)."""

from __future__ import annotations

import contextlib

import torch

from tunery.hardware import cpu_has_fast_bf16


def has_fast_bf16() -> bool:
    """A CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX (bf16 matmuls there run ~2× fp32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def resolve_precision(precision: str) -> str:
    """``auto`` becomes ``bf16-mixed`` where bf16 is fast, else ``fp32``."""
    if precision == "auto":
        return "bf16-mixed" if has_fast_bf16() else "fp32"
    return precision


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
