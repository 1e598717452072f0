"""Padding-free micro-batches: examples end to end in one row, each with position ids from 0.

With no ``attention_mask`` and restarting ``position_ids``, transformers builds a block-diagonal causal
mask (SDPA, eager) or calls flash-attention's variable-length kernel, so no token attends across
examples. The loss sees the same targets as the padded batch: a row's last position would predict the
next example's first token, so that first token's label is IGNORE_INDEX (in a padded batch the first
label is never a target either).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tunery.data.tokenize import IGNORE_INDEX, Encoded
from tunery.tuning.batching import collate


def pack(examples: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """One row of ``input_ids``, ``position_ids`` and ``labels`` holding every example in order."""
    ids: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    for e in examples:
        ids += e.input_ids
        positions += range(len(e.input_ids))
        labels += [IGNORE_INDEX, *e.labels[1:]]
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
    }


@dataclass(frozen=True)
class Batcher:
    """Builds a training micro-batch, packed or padded, on the run's device."""

    pad_id: int
    device: torch.device
    packing: bool = False

    def __call__(self, examples: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        batch = pack(examples) if self.packing else collate(examples, self.pad_id)
        if self.device.type == "cpu":
            return batch
        return {name: t.to(self.device, non_blocking=True) for name, t in batch.items()}
