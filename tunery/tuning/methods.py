"""The methods table: what a tuning method is — an objective (``SFT``, ``DPO``) and the weights it trains (a LoRA
adapter, ``PEFT_ADAPTER``; every weight, ``FULL``).

The runner, the multi-process helpers and the CLI look a method up here and nowhere else. The weights decide the
module that sets the model up and saves it (``lora.py``, ``full.py``: setup → main → fit → save); the objective
decides what the one loop computes (``objectives.py``: batch shape, loss, metrics). A new objective is a new
``Objective`` and new rows here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tunery.errors import ConfigError
from tunery.models.catalog import FULL, PEFT_ADAPTER
from tunery.tuning.spec import DPO, SFT


@dataclass(frozen=True)
class Method:
    """One row of ``METHODS``."""

    name: str
    """Its name on the command line (``tunery tune --method``)."""
    objective: str
    weights: str
    module: str
    """The module that sets up and saves these weights (one of tunery's own, never from input)."""
    summary: str

    def main(self, spec: Any, run_dir: Path, hooks: Any = None, resume: bool = False) -> Path:
        return self.weights_module().main(spec, run_dir, hooks, resume)

    def weights_module(self) -> ModuleType:
        return importlib.import_module(self.module)


METHODS = {
    m.name: m
    for m in (
        Method("lora", SFT, PEFT_ADAPTER, "tunery.tuning.lora", "supervised, a LoRA adapter (the default)"),
        Method("full", SFT, FULL, "tunery.tuning.full", "supervised, every weight"),
        Method("dpo", DPO, PEFT_ADAPTER, "tunery.tuning.lora", "preference pairs (DPO), a LoRA adapter"),
        Method("dpo-full", DPO, FULL, "tunery.tuning.full", "preference pairs (DPO), every weight"),
    )
}


def method_named(name: str) -> Method:
    """The row named ``name`` (``lora``, ``full``, ``dpo``, ``dpo-full``; ``PEFT_ADAPTER``/``FULL`` for SFT's)."""
    key = {PEFT_ADAPTER.lower(): "lora", FULL.lower(): "full", "sft": "lora", "dpo-lora": "dpo"}.get(name.lower(), name)
    if key.lower() not in METHODS:
        known = "; ".join(f"{m.name} ({m.summary})" for m in METHODS.values())
        raise ConfigError(f"method {name!r}: expected one of {known}")
    return METHODS[key.lower()]


def method_of(spec: Any) -> Method:
    """The row of a ``TuningSpec``'s objective and weights."""
    for method in METHODS.values():
        if (method.objective, method.weights) == (spec.objective, spec.method):
            return method
    raise ConfigError(f"no tuning method trains {spec.method} weights with the {spec.objective} objective")


def objective_of(spec: Any) -> Any:
    """The ``objectives.Objective`` a ``TuningSpec`` trains with, its settings applied (imports torch)."""
    from tunery.tuning.objectives import objective

    return objective(method_of(spec).objective, spec.beta, spec.preference_loss)
