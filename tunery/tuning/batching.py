"""Batches by length: little padding, a seeded order, micro-batches that fit a token budget."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from tunery.data.tokenize import IGNORE_INDEX, Encoded

SORT_WINDOW = 16  # batches whose examples are sorted by length together


def plan_epoch(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's optimizer steps as lists of example indices; a function of (seed, epoch) alone.

    Examples are shuffled, then sorted by length inside windows of ``SORT_WINDOW`` batches so each
    batch holds examples of similar length; the batches are shuffled again so the order of lengths
    carries no signal.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * SORT_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def micro_batches(indices: Sequence[int], lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Split one step's examples into micro-batches of at most ``token_budget`` padded tokens."""
    ordered = sorted(indices, key=lambda i: lengths[i], reverse=True)
    out: list[list[int]] = []
    for i in ordered:
        if out and lengths[out[-1][0]] * (len(out[-1]) + 1) <= token_budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE_INDEX on padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
