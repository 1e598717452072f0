"""The training loop shared by every method: explicit PyTorch, one step at a time.

What it computes is the run's objective (``tunery.tuning.objectives``: SFT's next-token loss, DPO's preference
loss): its loss is a sum over what it is normalised by (trained tokens, pairs) divided by that number in the whole
optimizer step, so splitting a step into micro-batches (gradient accumulation) never changes the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from tunery.data.tokenize import Encoded
from tunery.errors import TuningCancelled
from tunery.tuning.batching import collate, micro_batches, plan_epoch
from tunery.tuning.checkpoint import latest_checkpoint, save_checkpoint
from tunery.tuning.distributed import Processes, kill_point
from tunery.tuning.objectives import SUPERVISED, Objective
from tunery.tuning.precision import autocast


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint. ``batch`` is the next step's index within ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class Hooks:
    """How a run talks to its caller: metrics out, a stop request in, and the phase it enters (``step N``,
    ``save``, ``evaluation``). A stop is honoured at the start of a step, after the last step, after the save and
    during the evaluation, always with a checkpoint to resume from (see ``stop_point``)."""

    on_metrics: Callable[[dict[str, Any]], None] = lambda metrics: None
    should_stop: Callable[[], bool] = lambda: False
    on_phase: Callable[[str], None] = lambda phase: None


@dataclass
class Run:
    """Everything ``fit`` needs, built by a method module's ``setup``."""

    model: Any  # the module trained (a PeftModel for LoRA)
    core: Any  # the underlying *ForCausalLM whose decoder and output layer are called
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train: Sequence[Encoded]
    validation: Sequence[Encoded]
    epochs: int
    batch_size: int
    micro_batch_tokens: int
    seed: int
    pad_id: int
    run_dir: Any
    precision: str = "fp32"  # resolved: fp32 or bf16-mixed
    checkpoint_seconds: float = 600.0
    state: TrainState = field(default_factory=TrainState)
    hooks: Hooks = field(default_factory=Hooks)  # the caller's, set by ``fit``: the save after it stops on request too
    batcher: Callable[[Sequence[Encoded]], dict[str, torch.Tensor]] | None = None  # default: padded, on the CPU
    processes: Processes = field(default_factory=Processes)  # the processes sharing each step (distributed.py)
    eval_batcher: Callable[[Sequence[Encoded]], dict[str, torch.Tensor]] | None = None  # multimodal: media per batch
    forward: Callable[..., tuple[torch.Tensor, tuple]] | None = None  # sharded: FSDP's root
    objective: Objective = SUPERVISED  # what the loop computes: batch shape, loss, metrics (objectives.py)
    on_epoch: Callable[[TrainState, dict[str, Any]], None] | None = None  # an epoch's end: keep its checkpoint

    def batch(self, examples: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        return self.batcher(examples) if self.batcher else collate(examples, self.pad_id)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple]:
        """The objective's summed loss and statistics of ``batch``, through the sharded module when sharded."""
        return self.forward(batch) if self.forward else self.objective.loss(self.core, batch)

    def checkpoint(self) -> Any:
        """Save a checkpoint (every process gathers sharded state; process 0 writes); returns its path."""
        return save_checkpoint(
            self.run_dir, self.model, self.optimizer, self.scheduler, self.state, write=self.processes.is_main
        )

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


@torch.no_grad()
def evaluate(
    core: Any,
    examples: Sequence[Encoded],
    pad_id: int,
    token_budget: int,
    precision: str = "fp32",
    batcher: Callable[[Sequence[Encoded]], dict[str, torch.Tensor]] | None = None,
    forward: Callable[..., tuple[torch.Tensor, tuple]] | None = None,
    objective: Objective = SUPERVISED,
) -> dict[str, float]:
    """The objective's validation metrics over ``examples`` (SFT: mean loss per trained token, next-token accuracy
    and the share of answers greedy decoding reproduces exactly; ``forward``: ``Run.loss``)."""
    if not examples:
        return {}
    was_training = core.training
    core.eval()
    lengths = [len(e.input_ids) for e in examples]
    total, stats = 0.0, objective.zero
    for group in micro_batches(range(len(examples)), lengths, token_budget):
        with autocast(precision, core.device.type):
            group_examples = [examples[i] for i in group]
            found = batcher(group_examples) if batcher else collate(group_examples, pad_id)
            batch = {name: t.to(core.device) for name, t in found.items()}
            loss, found = forward(batch) if forward else objective.loss(core, batch)
        total, stats = total + float(loss), tuple(a + b for a, b in zip(stats, found, strict=True))
    core.train(was_training)
    return objective.metrics("eval", total, stats, sum(objective.weight(e) for e in examples))


def _evaluate(run: Run) -> dict[str, float]:
    """The validation loss and token accuracy of ``run``'s model now (``evaluate`` on its settings)."""
    return evaluate(
        run.core,
        run.validation,
        run.pad_id,
        run.micro_batch_tokens,
        run.precision,
        run.eval_batcher,
        run.forward,
        run.objective,
    )


def fit(run: Run, hooks: Hooks) -> TrainState:
    """Train from ``run.state`` to the last epoch; log every step, evaluate and checkpoint at epoch ends, and
    checkpoint inside an epoch once ``run.checkpoint_seconds`` of training have passed since the last one."""
    model, state = run.model, run.state
    run.hooks = hooks
    lengths = [len(e.input_ids) for e in run.train]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    if state.step == 0 and run.validation:
        hooks.on_metrics(
            {
                "step": 0,
                "epoch": 0,
                **_evaluate(run),
            }
        )
    started = time.perf_counter() - state.seconds
    checkpointed = state.seconds
    while state.epoch < run.epochs:
        plan = plan_epoch(lengths, run.batch_size, run.seed, state.epoch)
        while state.batch < len(plan):
            if run.processes.stop(hooks.should_stop()):
                _cancel(run, state, started)
            hooks.on_phase(f"step {state.step + 1}")
            step_examples = plan[state.batch]
            window = sum(run.objective.weight(run.train[i]) for i in step_examples)  # the loss is divided by
            step_loss, step_stats, step_tokens = 0.0, run.objective.zero, 0
            shared = run.processes.share(micro_batches(step_examples, lengths, run.micro_batch_tokens))
            for index, (group, counted) in enumerate(shared):
                if index and run.processes.stop(hooks.should_stop()):  # between micro-batches: a cancel waits for one
                    _cancel(run, state, started)
                batch = run.batch([run.train[i] for i in group])
                with autocast(run.precision, run.core.device.type):
                    loss, stats = run.loss(batch)
                if not counted:  # sharded: a pass in step with the other processes, adding nothing
                    (loss * 0.0).backward()
                    continue
                (loss / window).backward()
                step_loss += float(loss.detach())
                step_stats = tuple(a + b for a, b in zip(step_stats, stats, strict=True))
                step_tokens += sum(lengths[i] for i in group)
            step_loss, step_tokens, *step_stats = run.processes.sync(params, step_loss, step_tokens, *step_stats)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch += 1
            state.tokens += step_tokens
            state.seconds = time.perf_counter() - started
            metrics: dict[str, Any] = {
                "step": state.step,
                "total_steps": run.total_steps,
                "epoch": state.epoch + state.batch / len(plan),
                **run.objective.metrics("train", step_loss, step_stats, window),
                "learning_rate": run.scheduler.get_last_lr()[0],
                "tokens_per_second": state.tokens / max(state.seconds, 1e-9),
                "eta_seconds": (run.total_steps - state.step) * state.seconds / state.step,
            }
            if state.batch < len(plan):
                hooks.on_metrics(metrics)
                if state.seconds - checkpointed >= run.checkpoint_seconds:
                    run.checkpoint()
                    checkpointed = state.seconds
                kill_point(state.step, run.processes.rank)
                continue
            state.epoch, state.batch = state.epoch + 1, 0
            metrics.update(_evaluate(run))
            hooks.on_metrics(metrics)
            run.checkpoint()
            if run.on_epoch and run.processes.is_main:
                run.on_epoch(state, metrics)
            kill_point(state.step, run.processes.rank)
            break
    stop_point(run, "after the last step")  # a cancel during the last step: the epoch's checkpoint is just saved
    return state


def _cancel(run: Run, state: Any, started: float) -> NoReturn:
    """Stop between steps or micro-batches: a step's partial gradients are dropped, the checkpoint is the state
    after the last whole step."""
    run.optimizer.zero_grad(set_to_none=True)
    state.seconds = time.perf_counter() - started
    path = run.checkpoint()
    raise TuningCancelled(f"cancelled at step {state.step}; checkpoint saved", str(path))


def stop_point(run: Run, phase: str) -> None:
    """Raise ``TuningCancelled`` if the run's caller asks it to stop: after the loop, the newest checkpoint (the
    last epoch's, kept until the tuned model is complete) is what a resumed run continues from."""
    if not run.hooks.should_stop():
        return
    checkpoint = latest_checkpoint(run.run_dir)
    where = f"cancelled {phase} (step {run.state.step})"
    if checkpoint is None:
        raise TuningCancelled(f"{where}; no checkpoint")
    raise TuningCancelled(f"{where}; checkpoint {checkpoint.name} kept", str(checkpoint))
