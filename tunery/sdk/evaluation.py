"""Evaluate a model, or compare models and prompts, on your own data; both write a report.

from tunery import compare, evaluate
run = evaluate("out/router", "test.jsonl", perturb="typos,case")
print(run.comparison.evaluations[0].summary["accuracy"], run.files.html)
run = compare("test.jsonl", ["base=smollm2-135m-instruct:few-shot.yaml", "tuned=out/router"])
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.evaluation import (
    Candidate,
    Comparison,
    Events,
    Options,
    Pricing,
    Prompt,
    ReportFiles,
    compare_models,
    data_advice,
    load_prompt,
    parse_candidate,
    write_report,
)
from tunery.evaluation.compare import read_prompts, slug
from tunery.settings import tunery_home


@dataclass(frozen=True)
class EvaluationRun:
    """What an evaluation or comparison measured, and where its files are."""

    comparison: Comparison
    files: ReportFiles

    @property
    def output(self) -> Path:
        return self.files.html.parent


def _options(
    task: str,
    perturb: str | Sequence[str] | None,
    train: str | Path | None,
    input_price: float | None,
    output_price: float | None,
    max_output_tokens: int | None,
    limit: int | None,
    seed: int,
    advice: bool,
) -> Options:
    defaults = Pricing()
    pricing = Pricing(
        defaults.input_per_million if input_price is None else input_price,
        defaults.output_per_million if output_price is None else output_price,
    )
    return Options(
        task=task,
        perturb=perturb or (),  # type: ignore[arg-type]
        seed=seed,
        max_output_tokens=max_output_tokens,
        limit=limit,
        pricing=pricing,
        train=str(train) if train else None,
        advice=advice,
    )


def _output(output: str | Path | None, name: str) -> Path:
    if output:
        return Path(output)
    return tunery_home() / "evaluations" / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(name)[:40]}"


def evaluate(
    model: str | Path,
    data: str | Path,
    prompt: str | Path | None = None,
    *,
    task: str = "auto",
    output: str | Path | None = None,
    perturb: str | Sequence[str] | None = None,
    train: str | Path | None = None,
    input_price: float | None = None,
    output_price: float | None = None,
    max_output_tokens: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    advice: bool = True,
    events: Events | None = None,
    constrain: str | None = None,
    weights: str | None = None,
) -> EvaluationRun:
    """Evaluate one model (catalog id, model dir or tuned model) with an optional prompt YAML.

    Writes ``evaluation.json`` (metrics, error analysis, robustness), ``predictions.jsonl`` and the
    report (``report.html``, ``report.md``) under ``output``. ``weights``: ``served`` (default, or
    ``$TUNERY_EVALUATION_WEIGHTS``: the form ``tunery serve`` holds here, beside fp32 when it is another), ``fp32``
    (alone), ``auto``, ``bf16``, ``int8`` or ``int4`` (beside fp32).
    """
    name = Path(str(model)).name or str(model)
    candidate = Candidate(name, str(model), load_prompt(prompt) if prompt else Prompt())
    options = _options(task, perturb, train, input_price, output_price, max_output_tokens, limit, seed, advice)
    options = dataclasses.replace(options, constrain=constrain, weights=weights)  # constrain: "labels", "schema=FILE"
    comparison = compare_models(data, [candidate], options, events)
    files = write_report(
        comparison, _output(output, Path(str(model)).name), title=f"Evaluation of {model}", single=True
    )
    return EvaluationRun(comparison, files)


def compare(
    data: str | Path,
    candidates: Sequence[str | Candidate],
    *,
    task: str = "auto",
    output: str | Path | None = None,
    perturb: str | Sequence[str] | None = None,
    train: str | Path | None = None,
    input_price: float | None = None,
    output_price: float | None = None,
    max_output_tokens: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    advice: bool = True,
    events: Events | None = None,
    constrain: str | None = None,
    weights: str | None = None,
) -> EvaluationRun:
    """Run each candidate (``"NAME=MODEL[:PROMPT.yaml]"`` or a ``Candidate``) over the same examples.

    Writes ``report.html``, ``report.md``, ``comparison.json``, ``plots/`` and each candidate's
    predictions under ``output``.
    """
    parsed = [c if isinstance(c, Candidate) else parse_candidate(c) for c in candidates]
    options = _options(task, perturb, train, input_price, output_price, max_output_tokens, limit, seed, advice)
    options = dataclasses.replace(options, constrain=constrain, weights=weights)  # constrain: "labels", "schema=FILE"
    comparison = compare_models(data, parsed, options, events)
    files = write_report(comparison, _output(output, "compare"), title="Comparison")
    return EvaluationRun(comparison, files)


def advise(
    train: str | Path, prompts: str | Path | None = None, *, model: str | None = None, max_length: int = 1024
) -> dict[str, Any]:
    """Data advice for a training file; ``prompts`` (JSONL, answers optional) are checked for coverage, and
    ``model``'s tokenizer for examples truncated at ``max_length``."""
    tokenizer = None
    if model:
        from tunery.models.loading import load_tokenizer
        from tunery.models.sources import resolve_base

        tokenizer = load_tokenizer(resolve_base(model).path)
    examples = read_prompts(prompts) if prompts else []
    return data_advice(train, examples, tokenizer, max_length)
