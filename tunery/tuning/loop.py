"""The training loop shared by both methods: explicit PyTorch, one step at a time.

Loss is a sum over trained tokens divided by the number of trained tokens in the whole optimizer
step, so splitting a step into micro-batches (gradient accumulation) never changes the result.
Logits are computed only where a token is trained: with a 49k–262k vocabulary the output layer is a
large share of the work, and most positions of a prompt carry no loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tunery.data.tokenize import IGNORE_INDEX, Encoded
from tunery.errors import TuningCancelled
from tunery.tuning import multimodal
from tunery.tuning.batching import collate, micro_batches, plan_epoch
from tunery.tuning.checkpoint import latest_checkpoint, save_checkpoint
from tunery.tuning.distributed import Processes, kill_point
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
    forward: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, int, int]] | None = None  # sharded: FSDP's root
    on_epoch: Callable[[TrainState, dict[str, Any]], None] | None = None  # an epoch's end: keep its checkpoint

    def batch(self, examples: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        return self.batcher(examples) if self.batcher else collate(examples, self.pad_id)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        """``token_loss`` of ``batch``, through the sharded module when the weights are sharded."""
        return self.forward(batch) if self.forward else token_loss(self.core, batch)

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


def token_loss(core: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
    """Summed next-token loss over trained tokens, the count of correct argmax predictions, and the token count."""
    loss, correct, count, _ = scored(core, batch)
    return loss, correct, count


def scored(core: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int, int]:
    """``token_loss``'s three, and the rows whose every trained token is the argmax: the answers greedy decoding
    gives exactly (each of its tokens follows the same prefix as under teacher forcing), end of turn included."""
    inputs = {name: t for name, t in batch.items() if name != "labels"}  # attention_mask, or packed position_ids
    hidden = multimodal.body(core)(**inputs, use_cache=False).last_hidden_state  # a VLM's takes pixels too
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = core.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(core.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    wanted = targets[keep]
    loss = F.cross_entropy(logits.float(), wanted, reduction="sum")
    hits = logits.argmax(-1) == wanted
    row_hits = torch.ones_like(keep)
    row_hits[keep] = hits
    exact = int((row_hits.all(dim=1) & keep.any(dim=1)).sum())
    return loss, int(hits.sum()), int(wanted.numel()), exact


@torch.no_grad()
def evaluate(
    core: Any,
    examples: Sequence[Encoded],
    pad_id: int,
    token_budget: int,
    precision: str = "fp32",
    batcher: Callable[[Sequence[Encoded]], dict[str, torch.Tensor]] | None = None,
    forward: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, int, int]] | None = None,
) -> dict[str, float]:
    """Mean loss per trained token and next-token accuracy over ``examples`` (``forward``: ``Run.loss``), and, but
    through a sharded ``forward``, the share of answers greedy decoding reproduces exactly (``scored``)."""
    if not examples:
        return {}
    was_training = core.training
    core.eval()
    lengths = [len(e.input_ids) for e in examples]
    total, correct, count, exact = 0.0, 0, 0, 0
    for group in micro_batches(range(len(examples)), lengths, token_budget):
        with autocast(precision, core.device.type):
            group_examples = [examples[i] for i in group]
            found = batcher(group_examples) if batcher else collate(group_examples, pad_id)
            batch = {name: t.to(core.device) for name, t in found.items()}
            if forward:
                loss, ok, n = forward(batch)
            else:
                loss, ok, n, rows = scored(core, batch)
                exact += rows
        total, correct, count = total + float(loss), correct + ok, count + n
    core.train(was_training)
    found_metrics = {"eval_loss": total / max(count, 1), "eval_token_accuracy": correct / max(count, 1)}
    if not forward:
        found_metrics["eval_exact_match"] = exact / len(examples)
    return found_metrics


def _evaluate(run: Run) -> dict[str, float]:
    """The validation loss and token accuracy of ``run``'s model now (``evaluate`` on its settings)."""
    return evaluate(
        run.core, run.validation, run.pad_id, run.micro_batch_tokens, run.precision, run.eval_batcher, run.forward
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
                state.seconds = time.perf_counter() - started
                path = run.checkpoint()
                raise TuningCancelled(f"cancelled at step {state.step}; checkpoint saved", str(path))
            hooks.on_phase(f"step {state.step + 1}")
            step_examples = plan[state.batch]
            window_tokens = sum(run.train[i].trained_tokens for i in step_examples)
            step_loss, step_correct, step_tokens = 0.0, 0, 0
            for group, counted in run.processes.share(micro_batches(step_examples, lengths, run.micro_batch_tokens)):
                batch = run.batch([run.train[i] for i in group])
                with autocast(run.precision, run.core.device.type):
                    loss, correct, _ = run.loss(batch)
                if not counted:  # sharded: a pass in step with the other processes, adding nothing
                    (loss * 0.0).backward()
                    continue
                (loss / window_tokens).backward()
                step_loss += float(loss.detach())
                step_correct += correct
                step_tokens += sum(lengths[i] for i in group)
            step_loss, step_correct, step_tokens = run.processes.sync(params, step_loss, step_correct, step_tokens)
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
                "train_loss": step_loss / window_tokens,
                "train_token_accuracy": step_correct / window_tokens,
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
