"""Full fine-tuning (``FULL``): every weight trains.

setup → main → fit → save. The output is a standalone model directory that
``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunery.models.loading import load_model
from tunery.tuning import multimodal
from tunery.tuning.devices import load_options, place, prepare_model, resolve_device
from tunery.tuning.distributed import Processes, processes
from tunery.tuning.loop import Hooks, Run, fit
from tunery.tuning.memory import check_fits
from tunery.tuning.methods import objective_of
from tunery.tuning.prepare import Prepared, finish, make_run, prepare, run_hooks, start_or_resume
from tunery.tuning.spec import TuningSpec


def setup(
    spec: TuningSpec, run_dir: Path, resume: bool = False, group: Processes | None = None
) -> tuple[Prepared, Run]:
    group = group or Processes()
    prep = prepare(spec, run_dir)
    placement = place(spec, group.local_rank)
    check_fits(prep, placement, group.count, group.fsdp, group.offload)
    torch.manual_seed(spec.seed)
    model = prepare_model(load_model(prep.base.path, **load_options(spec, placement)), spec, placement)
    if prep.start is not None and prep.start.adapter is not None:  # a tuned LoRA model: its adapter merged in first
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(prep.start.adapter)).merge_and_unload()
    model.requires_grad_(True)
    if prep.family is not None:  # a vision-language model: its media tower and projector frozen unless opened
        multimodal.freeze_media(model, prep.family, spec.train_projector, spec.train_vision)
    forward = group.shard(model, objective_of(spec).loss)  # with --fsdp (else None): before the optimizer
    # sees the weights
    run = make_run(prep, model, core=model, placement=placement, processes=group)
    run.forward = forward
    if forward is not None:  # sharded: weights are gathered whole once, at the end; the tuned model is the last epoch
        run.on_epoch = None
    start_or_resume(prep, run, resume)
    return prep, run


def main(spec: TuningSpec, run_dir: Path, hooks: Hooks | None = None, resume: bool = False) -> Path:
    with processes(spec, run_dir, resume, lambda rank: resolve_device(spec.device, rank)) as group:
        prep, run = setup(spec, run_dir, resume, group)
        fit(run, run_hooks(hooks, run_dir, group))
        weights = group.full_state(run.model)  # sharded: gathered whole by every process
        return save(prep, run, weights) if group.is_main else run_dir


def save(prep: Prepared, run: Run, weights: dict | None = None) -> Path:
    run.model.config._name_or_path = str(prep.run_dir)
    run.model.save_pretrained(prep.run_dir, safe_serialization=True, state_dict=weights)
    return finish(prep, run)
