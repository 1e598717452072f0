"""Training objectives: what the one training loop computes, and on what batches.

An objective brings its batch shape (one sequence per example, or a chosen/rejected pair), its loss function
(``tunery.tuning.losses``), what that loss is normalised by (trained tokens; pairs), the metrics it reports, and
whatever it needs once before the first step. The loop, the checkpoints and the processes are the same for all.
A new objective (ORPO, KTO) is a new entry here and a new loss in ``losses``; the methods table
(``tunery.tuning.methods``) pairs each objective with the weights it trains.

DPO's reference model is the policy at step 0, whose log-probability of each answer is computed once, before the
first step, and kept (``reference.json`` in the run directory, so a resumed run uses the same numbers):

- LoRA: a new adapter starts at zero (its B matrices are zero), so the policy at step 0 *is* the base model with the
  adapter disabled; no second copy of the weights. Continuing a tuned adapter (SFT → DPO), it is that tuned model,
  which is the reference DPO wants.
- FULL: the frozen starting weights, as their log-probabilities: 8 bytes per pair instead of a second copy of the
  model (4 bytes per parameter in fp32: 540 MB for SmolLM2-135M), and one forward pass per pair once rather than
  one per pair per epoch. It also keeps FSDP simple: the loss needs no second sharded model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tunery.data.tokenize import EncodedPair
from tunery.tuning.batching import collate, micro_batches
from tunery.tuning.checkpoint import write_atomic
from tunery.tuning.losses import SIGMOID, preference_loss, scored_loss, sequence_logps
from tunery.tuning.precision import autocast
from tunery.tuning.spec import DPO, SFT

REFERENCE_FILE = "reference.json"
DEFAULT_BETA = 0.1


def sft_metrics(split: str, loss: float, stats: Sequence[float], tokens: int) -> dict[str, float]:
    """``train_loss``/``eval_loss`` per trained token and next-token accuracy; on validation also
    ``eval_exact_match``, the share of answers greedy decoding reproduces (``losses.scored_loss``)."""
    correct = stats[0]
    found = {f"{split}_loss": loss / max(tokens, 1), f"{split}_token_accuracy": correct / max(tokens, 1)}
    if split == "eval":
        found["eval_exact_match"] = stats[2] / max(stats[3], 1)
    return found


def dpo_metrics(split: str, loss: float, stats: Sequence[float], pairs: int) -> dict[str, float]:
    """Means over pairs, with TRL's names: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies`` (the share of pairs whose chosen answer gets the higher reward); ``eval_`` before them on
    the validation set."""
    chosen, rejected, accurate = stats
    n = max(pairs, 1)
    rewards = "rewards/" if split == "train" else f"{split}_rewards/"
    return {
        f"{split}_loss": loss / n,
        f"{rewards}chosen": chosen / n,
        f"{rewards}rejected": rejected / n,
        f"{rewards}margins": (chosen - rejected) / n,
        f"{rewards}accuracies": accurate / n,
    }


@dataclass(frozen=True)
class PairBatcher:
    """A pair micro-batch on the run's device: the chosen rows, then the rejected rows (right-padded), and each
    pair's reference log-probabilities once they are known. Never packed: each side's log-probability is a row's."""

    pad_id: int
    device: torch.device | None = None

    def __call__(self, pairs: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id)
        if all(p.reference is not None for p in pairs):
            references = torch.tensor([p.reference for p in pairs], dtype=torch.float32)
            batch["reference_chosen"], batch["reference_rejected"] = references[:, 0], references[:, 1]
        if self.device is None or self.device.type == "cpu":
            return batch
        return {name: t.to(self.device, non_blocking=True) for name, t in batch.items()}


@dataclass(frozen=True)
class Objective:
    """What one objective computes; see the module docstring."""

    name: str
    loss: Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, tuple]]
    """``(core, batch) -> (summed loss, summed statistics)``."""
    weight: Callable[[Any], int]
    """What one example adds to the number the step's loss is divided by."""
    metrics: Callable[[str, float, Sequence[float], int], dict[str, float]]
    """``(split, summed loss, summed statistics, summed weight)`` → the named metrics of ``split``."""
    zero: tuple
    """The statistics of no examples."""
    pairs: bool = False
    """Its data are preference pairs (``tunery.data.formats.Preference``)."""

    def batcher(self, pad_id: int, device: torch.device | None) -> Callable[[Sequence[Any]], dict] | None:
        """Its own micro-batch builder, or None for the method's (padded or packed sequences)."""
        return PairBatcher(pad_id, device) if self.pairs else None

    def start(self, run: Any) -> None:
        """Before the first step (and on resume): DPO fixes its reference log-probabilities."""
        if self.pairs:
            with_reference(run)


SUPERVISED = Objective(SFT, scored_loss, lambda e: e.trained_tokens, sft_metrics, (0, 0, 0, 0))


def objective(name: str = SFT, beta: float = DEFAULT_BETA, preference_loss_kind: str = SIGMOID) -> Objective:
    """The objective ``name`` (``SFT`` or ``DPO``, with DPO's ``beta`` and loss kind: ``sigmoid`` or ``ipo``)."""
    if name == SFT:
        return SUPERVISED
    loss = partial(preference_loss, beta=beta, kind=preference_loss_kind)
    return Objective(DPO, loss, lambda pair: 1, dpo_metrics, (0.0, 0.0, 0), pairs=True)


def with_reference(run: Any) -> None:
    """Give every pair of ``run`` its reference log-probabilities: those saved in the run directory, or computed
    now with the model as it is (step 0) and saved by process 0. Every process computes them alike, in one fixed
    order and grouping, so any number of processes gets the same numbers (and sharded passes meet)."""
    path = Path(run.run_dir) / REFERENCE_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        train, validation = saved["train"], saved["validation"]
    else:
        train, validation = reference_logps(run, run.train), reference_logps(run, run.validation)
        if run.processes.is_main:
            write_atomic(path, json.dumps({"train": train, "validation": validation}))
    run.train = [replace(p, reference=tuple(r)) for p, r in zip(run.train, train, strict=True)]
    run.validation = [replace(p, reference=tuple(r)) for p, r in zip(run.validation, validation, strict=True)]


@torch.no_grad()
def reference_logps(run: Any, pairs: Sequence[EncodedPair]) -> list[list[float]]:
    """``[chosen, rejected]`` summed log-probability of each pair's answers under ``run``'s model now."""
    out: list[list[float]] = [[0.0, 0.0] for _ in pairs]
    was_training = run.core.training
    run.core.eval()
    batcher = PairBatcher(run.pad_id, run.core.device)
    for group in micro_batches(range(len(pairs)), [len(p.input_ids) for p in pairs], run.micro_batch_tokens):
        batch = batcher([replace(pairs[i], reference=None) for i in group])
        with autocast(run.precision, run.core.device.type):
            logps, _ = run.forward(batch, loss=sequence_logps) if run.forward else sequence_logps(run.core, batch)
        values = logps.float().cpu().tolist()
        for k, i in enumerate(group):
            out[i] = [values[k], values[k + len(group)]]
    run.core.train(was_training)
    return out
