"""What this machine's CPU can do fast, read once from ``/proc/cpuinfo``: one rule for tuning, serving and the
benchmarks' tables."""

from __future__ import annotations

import functools
import os
from pathlib import Path

FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.is_file() else ""


def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().split())


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run about 2x fp32 there; on AVX2-only CPUs they are the slow path."""
    return bool(cpu_flags() & set(FAST_BF16_FLAGS))


def cpu_kind() -> str:
    """For benchmark tables: the model name, the cores visible, and which kind of CPU it is."""
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")]
    name = names[0] if names else "?"
    fast = [flag for flag in FAST_BF16_FLAGS if flag in cpu_flags()]
    simd = ", ".join(fast) if fast else ("AVX2 only (no AVX512-BF16/AMX)" if "avx2" in cpu_flags() else "no AVX2")
    return f"{name}, {os.cpu_count()} cores visible, {simd}"
