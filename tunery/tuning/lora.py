"""LoRA tuning (``PEFT_ADAPTER``): rank-``adapterSize`` adapters on every linear layer, base frozen.

setup → main → fit → save. The output is a PEFT adapter directory that ``PeftModel.from_pretrained``
loads onto the cached base model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tunery.models.loading import load_model
from tunery.tuning import multimodal
from tunery.tuning.devices import load_options, place, prepare_model, resolve_device
from tunery.tuning.distributed import Processes, processes
from tunery.tuning.loop import Hooks, Run, fit
from tunery.tuning.memory import check_fits
from tunery.tuning.prepare import Prepared, finish, make_run, prepare, run_hooks, start_or_resume
from tunery.tuning.spec import TuningSpec


def setup(
    spec: TuningSpec, run_dir: Path, resume: bool = False, group: Processes | None = None
) -> tuple[Prepared, Run]:
    group = group or Processes()
    prep = prepare(spec, run_dir)
    placement = place(spec, group.local_rank)
    check_fits(prep, placement, group.count)
    torch.manual_seed(spec.seed)
    base = prepare_model(load_model(prep.base.path, **load_options(spec, placement)), spec, placement)
    targets: str | list[str] = "all-linear"
    projector = None
    if prep.family is not None:  # a vision-language model: the language model's linear layers (multimodal.py)
        targets = multimodal.lora_targets(base, prep.family, spec.train_vision)
        projector = multimodal.projector_modules(prep.family, spec.train_projector)
    config = LoraConfig(
        r=prep.adapter_size,
        lora_alpha=2 * prep.adapter_size,
        lora_dropout=0.0,
        target_modules=targets,
        modules_to_save=projector,
        task_type="CAUSAL_LM",
    )
    if prep.start is not None and prep.start.adapter is not None:  # a tuned LoRA model: its adapter trains on
        model = PeftModel.from_pretrained(base, str(prep.start.adapter), is_trainable=True)
    else:
        model = get_peft_model(base, config)
    run = make_run(prep, model, core=model.get_base_model(), placement=placement, processes=group)
    start_or_resume(prep, run, resume)
    return prep, run


def main(spec: TuningSpec, run_dir: Path, hooks: Hooks | None = None, resume: bool = False) -> Path:
    with processes(spec, run_dir, resume, lambda rank: resolve_device(spec.device, rank)) as group:
        prep, run = setup(spec, run_dir, resume, group)
        fit(run, run_hooks(hooks, run_dir, group))
        return save(prep, run) if group.is_main else run_dir


def save(prep: Prepared, run: Run) -> Path:
    run.model.peft_config["default"].base_model_name_or_path = str(prep.base.path)
    run.model.save_pretrained(prep.run_dir, safe_serialization=True)
    (prep.run_dir / "README.md").unlink(missing_ok=True)  # PEFT's blank model card
    return finish(prep, run)
