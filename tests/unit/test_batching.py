"""Batching: a seeded epoch plan that covers every example once, micro-batches within a token budget.

.venv/bin/python -m pytest tests/unit/test_batching.py -q
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from tunery.data import IGNORE_INDEX, Encoded
from tunery.tuning.batching import SORT_WINDOW, collate, micro_batches, plan_epoch

_RNG = random.Random(7)
LENGTHS = [_RNG.randint(3, 200) for _ in range(203)]


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64, 500])
@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_plan_covers_every_index_once(batch_size, epoch):
    plan = plan_epoch(LENGTHS, batch_size, seed=11, epoch=epoch)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(LENGTHS)))
    assert len(plan) == math.ceil(len(LENGTHS) / batch_size)
    assert all(1 <= len(batch) <= batch_size for batch in plan)


def test_plan_is_a_function_of_seed_and_epoch():
    assert plan_epoch(LENGTHS, 8, seed=3, epoch=2) == plan_epoch(list(LENGTHS), 8, seed=3, epoch=2)
    plans = [plan_epoch(LENGTHS, 8, seed=3, epoch=e) for e in range(4)]
    assert all(a != b for i, a in enumerate(plans) for b in plans[i + 1 :])
    assert plan_epoch(LENGTHS, 8, seed=4, epoch=2) != plans[2]
    # The global RNGs neither feed nor are consumed by the plan.
    random.seed(0)
    torch.manual_seed(0)
    before = (random.random(), torch.rand(1))
    random.seed(0)
    torch.manual_seed(0)
    plan_epoch(LENGTHS, 8, seed=3, epoch=2)
    assert (random.random(), torch.rand(1)) == before
    random.seed(123)
    assert plan_epoch(LENGTHS, 8, seed=3, epoch=2) == plans[2]


def test_plan_groups_similar_lengths():
    """Batches are drawn from length-sorted windows: padding is far below a random split's."""
    batch_size = 8

    def padding(plan):
        return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in plan)

    rng = random.Random(0)
    order = list(range(len(LENGTHS)))
    rng.shuffle(order)
    unsorted = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    assert padding(plan_epoch(LENGTHS, batch_size, seed=0, epoch=0)) < padding(unsorted) / 3
    assert len(LENGTHS) > batch_size * SORT_WINDOW  # more than one window


def test_empty_dataset_plans_nothing():
    assert plan_epoch([], 8, seed=0, epoch=0) == []


@pytest.mark.parametrize("budget", [1, 50, 256, 1000, 10**6])
def test_micro_batches_cover_the_step_within_the_budget(budget):
    step = [5, 17, 3, 99, 42, 8, 150, 77, 23]
    groups = micro_batches(step, LENGTHS, budget)
    assert sorted(i for g in groups for i in g) == sorted(step)
    for g in groups:
        padded = max(LENGTHS[i] for i in g) * len(g)
        assert padded <= budget or len(g) == 1  # one example over budget still runs, alone
    if budget == 1:
        assert all(len(g) == 1 for g in groups)
    if budget == 10**6:
        assert len(groups) == 1


def test_collate_pads_right_and_masks_padding():
    a = Encoded(input_ids=[5, 6, 7], labels=[IGNORE_INDEX, 6, 7], full_length=3)
    b = Encoded(input_ids=[8], labels=[8], full_length=1)
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
