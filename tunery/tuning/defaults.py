"""The settings a run leaves unset, chosen from the shape of its training data: the one rule, in one place.

The shape is what the training file says about the task: how many examples, how many distinct answers (and
whether they form a closed label set), how many examples each answer has, and how long an answer is.

- **Epochs.** About 1,000 example passes in all (``tunery.data.stats.default_epochs``: 2 to 10 epochs, a small
  file needs more passes) — and, for a closed label set, each label's examples at least ``LABEL_PASSES`` times, so
  that a file with many labels and few examples of each (60 intents × 10) is not stopped after two epochs while
  its labels are still being learned. Both within ``MOST_PASSES`` example passes in all, which bounds the time.
- **Learning rate multiplier** and **adapter size**: 1 and rank 8 (measured on the quality benchmark,
  ``benchmarks/quality.py``; ``docs/quality.md`` says what was measured).

Each choice comes with its reason, which the run records (``tunery.json``, the job) and ``tunery tune`` prints:
``epochs 6 (auto: 675 examples, 75 answers, 9 per answer, of ~4 tokens)``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunery.data.stats import default_epochs

LABEL_PASSES = 50
MOST_PASSES = 5000
LEAST_EPOCHS, MOST_EPOCHS = 2, 10
ADAPTER_SIZE = 8
LEARNING_RATE_MULTIPLIER = 1.0
DPO_LEARNING_RATE_MULTIPLIER = 0.1
"""DPO's: benchmarks/dpo.py (SFT on the demo tickets, then DPO from it) lost 1 of 80 tickets' exact match at 1 (2
epochs) and none at 0.1 (1 epoch), the chosen answers' rewards staying level instead of falling."""


@dataclass(frozen=True)
class DataShape:
    """What the training data look like, as the defaults see them."""

    examples: int
    answers: int
    """Distinct answers (final model turns, stripped)."""
    closed: bool
    """The answers form a closed label set (``tunery.evaluation.tasks.closed_label_set``)."""
    answer_tokens: float
    """Median trained tokens per example."""
    json_answers: bool = False
    """Every answer is a JSON object (an extraction task)."""

    @classmethod
    def of(cls, answers: Sequence[str], trained_tokens: Sequence[int], closed: bool) -> DataShape:
        distinct = len({a.strip() for a in answers})
        median = float(statistics.median(trained_tokens)) if trained_tokens else 0.0
        return cls(len(answers), distinct, closed, median, bool(answers) and all(map(_is_json_object, answers)))

    @property
    def per_answer(self) -> float:
        return self.examples / max(self.answers, 1)

    def describe(self) -> str:
        if self.closed:
            return (
                f"{self.examples} examples, {self.answers} answers, {self.per_answer:.0f} per answer, "
                f"of ~{self.answer_tokens:.0f} tokens"
            )
        return f"{self.examples} examples, {self.answers} distinct answers of ~{self.answer_tokens:.0f} tokens"

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "distinctAnswers": self.answers,
            "closedLabelSet": self.closed,
            "examplesPerAnswer": round(self.per_answer, 2),
            "answerTokens": self.answer_tokens,
            "jsonAnswers": self.json_answers,
        }


@dataclass(frozen=True)
class Settings:
    """A run's resolved epochs, adapter size and learning rate multiplier, each with where it came from."""

    epochs: int
    adapter_size: int
    learning_rate_multiplier: float
    reasons: dict[str, str]
    """By setting: ``set`` (the request's) or ``auto: <the shape that chose it>``."""

    def describe(self) -> list[str]:
        """One line per setting: ``epochs 6 (auto: 675 examples, 75 answers, 9 per answer, of ~4 tokens)``."""
        return [
            f"epochs {self.epochs} ({self.reasons['epochs']})",
            f"adapter size {self.adapter_size} ({self.reasons['adapterSize']})",
            f"learning rate multiplier {self.learning_rate_multiplier:g} ({self.reasons['learningRateMultiplier']})",
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochCount": self.epochs,
            "adapterSize": self.adapter_size,
            "learningRateMultiplier": self.learning_rate_multiplier,
            "reasons": dict(self.reasons),
        }


def auto_epochs(shape: DataShape) -> int:
    """About 1,000 example passes (``default_epochs``), and for a closed label set ``LABEL_PASSES`` per label, within
    ``MOST_PASSES`` in all; 2 to 10 epochs."""
    epochs = default_epochs(shape.examples)
    if shape.closed:
        epochs = max(epochs, math.ceil(LABEL_PASSES / max(shape.per_answer, 1)))
        epochs = min(epochs, max(1, MOST_PASSES // max(shape.examples, 1)))
    return max(LEAST_EPOCHS, min(MOST_EPOCHS, epochs))


def resolve(
    shape: DataShape,
    epochs: int | None,
    adapter_size: int | None,
    learning_rate_multiplier: float | None,
    objective: str = "SFT",
) -> Settings:
    """The run's settings: those given kept, the others from ``shape`` (and the learning rate from ``objective``)."""
    auto = f"auto: {shape.describe()}"
    preference = objective == "DPO"
    rate_reason = "auto: a tenth of SFT's, for DPO" if preference else "auto: the default"
    return Settings(
        epochs=epochs or auto_epochs(shape),
        adapter_size=adapter_size or ADAPTER_SIZE,
        learning_rate_multiplier=learning_rate_multiplier
        or (DPO_LEARNING_RATE_MULTIPLIER if preference else LEARNING_RATE_MULTIPLIER),
        reasons={
            "epochs": "set" if epochs else auto,
            "adapterSize": "set" if adapter_size else "auto: the default",
            "learningRateMultiplier": "set" if learning_rate_multiplier else rate_reason,
        },
    )


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
