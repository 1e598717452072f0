"""The validation split a run makes itself when it is given no validation file.

``VALIDATION_SHARE`` of the training examples (at most ``MOST_HELD_OUT``) are held out, stratified: a closed label
set by label, JSON answers by their set of keys, other answers as one group; each group gives its share (largest
remainders first, seeded), and never its last example. The held-out examples are never trained on. A file of fewer
than ``LEAST_EXAMPLES`` examples is not split (there would be too few left to learn from or to judge by): the run
then has no validation, and says so.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VALIDATION_SHARE = 0.1
MOST_HELD_OUT = 200
LEAST_EXAMPLES = 40


@dataclass(frozen=True)
class Split:
    """Which training examples (by index) are held out, and what the run says about it."""

    held_out: tuple[int, ...]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"heldOut": len(self.held_out), "share": VALIDATION_SHARE, "note": self.note}


def stratum(answer: str, closed: bool) -> str:
    """The group an answer is stratified in: itself (a label), its JSON object's keys, or one group for the rest."""
    if closed:
        return answer.strip()
    try:
        found = json.loads(answer)
    except ValueError:
        return ""
    return "json:" + ",".join(sorted(found)) if isinstance(found, dict) else ""


def held_out(answers: Sequence[str], closed: bool, seed: int) -> Split:
    """The examples to hold out of ``answers``' file (see the module docstring)."""
    count = len(answers)
    if count < LEAST_EXAMPLES:
        return Split(
            (),
            f"no validation: {count} training examples are too few for an automatic split (it needs "
            f"{LEAST_EXAMPLES}); pass a validation file to have one",
        )
    groups: dict[str, list[int]] = defaultdict(list)
    for index, answer in enumerate(answers):
        groups[stratum(answer, closed)].append(index)
    wanted = min(MOST_HELD_OUT, round(count * VALIDATION_SHARE))
    rng = random.Random(seed)
    shares = {key: len(members) * wanted / count for key, members in groups.items()}
    taken = {key: min(math.floor(share), len(groups[key]) - 1) for key, share in shares.items()}
    order = sorted(groups, key=lambda key: (-(shares[key] - taken[key]), rng.random()))
    for key in order:
        if sum(taken.values()) >= wanted:
            break
        if taken[key] < len(groups[key]) - 1:
            taken[key] += 1
    chosen = sorted(i for key, members in groups.items() for i in rng.sample(members, taken[key]))
    how = "by label" if closed else "by answer shape"
    note = (
        f"validation: {len(chosen)} of {count} training examples ({len(chosen) / count:.0%}, stratified {how}) "
        "held out and never trained on"
    )
    return Split(tuple(chosen), note)
