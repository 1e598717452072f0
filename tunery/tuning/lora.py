"""LoRA tuning (``PEFT_ADAPTER``): rank-``adapterSize`` adapters on every linear layer, base frozen.

setup → main → fit → save. The output is a PEFT adapter directory that ``PeftModel.from_pretrained``
loads onto the cached base model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from tunery.models.loading import load_model
from tunery.tuning.loop import Hooks, Run, fit
from tunery.tuning.prepare import Prepared, finish, logging_hooks, make_run, prepare, start_or_resume
from tunery.tuning.spec import TuningSpec


def setup(spec: TuningSpec, run_dir: Path, resume: bool = False) -> tuple[Prepared, Run]:
    prep = prepare(spec, run_dir)
    torch.manual_seed(spec.seed)
    base = load_model(prep.base.path)
    config = LoraConfig(
        r=spec.adapter_size,
        lora_alpha=2 * spec.adapter_size,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    run = make_run(prep, model, core=model.get_base_model())
    start_or_resume(prep, run, resume)
    return prep, run


def main(spec: TuningSpec, run_dir: Path, hooks: Hooks | None = None, resume: bool = False) -> Path:
    prep, run = setup(spec, run_dir, resume)
    fit(run, logging_hooks(hooks or Hooks(), run_dir))
    return save(prep, run)


def save(prep: Prepared, run: Run) -> Path:
    run.model.peft_config["default"].base_model_name_or_path = str(prep.base.path)
    run.model.save_pretrained(prep.run_dir, safe_serialization=True)
    (prep.run_dir / "README.md").unlink(missing_ok=True)  # PEFT's blank model card
    return finish(prep, run)
