"""Full fine-tuning (``FULL``): every weight trains.

setup → main → fit → save. The output is a standalone model directory that
``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunery.models.loading import load_model
from tunery.tuning.loop import Hooks, Run, fit
from tunery.tuning.prepare import Prepared, finish, logging_hooks, make_run, prepare, start_or_resume
from tunery.tuning.spec import TuningSpec


def setup(spec: TuningSpec, run_dir: Path, resume: bool = False) -> tuple[Prepared, Run]:
    prep = prepare(spec, run_dir)
    torch.manual_seed(spec.seed)
    model = load_model(prep.base.path)
    model.requires_grad_(True)
    run = make_run(prep, model, core=model)
    start_or_resume(prep, run, resume)
    return prep, run


def main(spec: TuningSpec, run_dir: Path, hooks: Hooks | None = None, resume: bool = False) -> Path:
    prep, run = setup(spec, run_dir, resume)
    fit(run, logging_hooks(hooks or Hooks(), run_dir))
    return save(prep, run)


def save(prep: Prepared, run: Run) -> Path:
    run.model.config._name_or_path = str(prep.run_dir)
    run.model.save_pretrained(prep.run_dir, safe_serialization=True)
    return finish(prep, run)
