"""Compare candidates on the same examples: one model with one prompt each, one table, one report.

Typically the base model with a zero-shot and a few-shot prompt, and tuned models with a short
prompt. ``compare_models`` reads the data, infers the task, runs every candidate (each model is
loaded once), adds data advice for the training file when one is known, and writes the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.data.formats import Example
from tunery.data.validation import read_examples
from tunery.errors import ConfigError, DatasetError
from tunery.evaluation.evaluate import (
    Candidate,
    Evaluation,
    Events,
    agreement,
    evaluate_engine,
    measured_weights,
    with_reference,
)
from tunery.evaluation.perturb import parse_perturbations
from tunery.evaluation.run import output_budget
from tunery.evaluation.tasks import ALL_MODALITIES, Task, resolve_task
from tunery.models.tuned import is_tuned_dir, read_manifest
from tunery.serving.constrain import label_config
from tunery.serving.gemini import GenerationConfig

if TYPE_CHECKING:
    from tunery.serving.engine import Engine

SUMMARY_FILE = "comparison.json"


@dataclass(frozen=True)
class Pricing:
    """What a token costs, in dollars per million tokens (input: prompt tokens; output: generated tokens)."""

    input_per_million: float = 0.15
    output_per_million: float = 0.60

    def __post_init__(self) -> None:
        if self.input_per_million < 0 or self.output_per_million < 0:
            raise ConfigError(
                f"token prices must be 0 or more; got input {self.input_per_million}, output {self.output_per_million}"
            )

    def per_1k_requests(self, summary: dict[str, Any]) -> float:
        """Dollars for 1,000 requests of the mean prompt and output length in ``summary``."""
        per_request = summary["prompt_tokens_mean"] * self.input_per_million
        per_request += summary["output_tokens_mean"] * self.output_per_million
        return 1000 * per_request / 1_000_000

    def to_dict(self) -> dict[str, float]:
        return {"inputPerMillionTokens": self.input_per_million, "outputPerMillionTokens": self.output_per_million}


QUALITY_COLUMNS = {
    "classification": [("accuracy", "accuracy", "pct"), ("macro_f1", "macro-F1", "f3")],
    "extraction": [("json_valid", "JSON valid", "pct"), ("exact_match", "exact match", "pct"),
                   ("field_f1", "field F1", "f3")],
    "generation": [("exact_match", "exact match", "pct"), ("rougeL", "ROUGE-L", "f3"), ("chrf", "chrF", "f1")],
}  # fmt: skip


@dataclass
class Comparison:
    """Every candidate's evaluation on one data file, the price used for cost, and data advice."""

    data: str
    task: Task
    evaluations: list[Evaluation]
    pricing: Pricing = field(default_factory=Pricing)
    advice: dict[str, Any] | None = None

    @property
    def perturbations(self) -> list[str]:
        return list(dict.fromkeys(n for e in self.evaluations for n in e.robustness))

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headers and rows (strings): quality, the weights it was measured with (and, where that is not fp32, the
        primary metric in fp32 and the answers that agree), mean prompt and output tokens per request, latency per
        request (p50, p95), cost per 1,000 requests, and the quality drop per perturbation."""
        quality = QUALITY_COLUMNS[self.task.kind]
        metric, title, kind = next(c for c in quality if c[0] == self.task.primary_metric)
        references = any(e.reference is not None for e in self.evaluations)
        named = references or len({e.weights for e in self.evaluations}) > 1  # else one form: ``weights`` says it
        headers = ["candidate", *(t for _, t, _ in quality), *["weights"] * named]
        headers += [f"{title} (fp32)", "answers as fp32"] if references else []
        headers += ["prompt tokens", "output tokens", "p50 ms", "p95 ms", "$ / 1k requests"]
        headers += [f"drop: {n}" for n in self.perturbations]
        rows = []
        for e in self.evaluations:
            s = e.summary
            row = [e.candidate.name, *(_format(s[key], k) for key, _, k in quality), *[e.weights] * named]
            if references and e.reference is None:
                row += ["-", "-"]
            elif references and e.reference is not None:
                same, total = agreement(e.predictions, e.reference.predictions)
                row += [_format(e.reference.summary[metric], kind), f"{same}/{total}"]
            row += [f"{s['prompt_tokens_mean']:.0f}", f"{s['output_tokens_mean']:.1f}", f"{s['latency_ms_p50']:.0f}",
                    f"{s['latency_ms_p95']:.0f}", f"{self.pricing.per_1k_requests(s):.4f}"]  # fmt: skip
            row += [_drop(e.robustness.get(n), self.task) for n in self.perturbations]
            rows.append(row)
        return headers, rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "task": self.task.to_dict(),
            "pricing": self.pricing.to_dict(),
            "candidates": [
                {**e.to_dict(), "costPer1kRequests": self.pricing.per_1k_requests(e.summary)} for e in self.evaluations
            ],
            "dataAdvice": self.advice,
        }


def _format(value: float, kind: str) -> str:
    return {"pct": f"{value:.1%}", "f3": f"{value:.3f}", "f1": f"{value:.1f}"}[kind]


def _drop(result: dict[str, Any] | None, task: Task) -> str:
    if result is None:
        return "-"
    return f"{result['drop'] * 100:+.1f} pt" if task.kind == "classification" else f"{result['drop']:+.3f}"


@dataclass(frozen=True)
class Options:
    """How candidates are run and priced; the defaults are the cheap, deterministic ones."""

    task: str = "auto"
    perturb: tuple[str, ...] = ()
    seed: int = 0
    max_output_tokens: int | None = None  # None: the longest gold answer plus a few tokens
    limit: int | None = None  # evaluate the first N examples only
    pricing: Pricing = field(default_factory=Pricing)
    train: str | None = None  # training file for data advice and the label set
    advice: bool = True
    max_length: int = 1024  # for the truncation check of the training file
    constrain: str | None = None  # "labels" (answers restricted to the label set), "none", or "schema=FILE"
    weights: str | None = None  # "served", "auto", "fp32", "bf16", "int8", "int4"; None: $TUNERY_EVALUATION_WEIGHTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "perturb", parse_perturbations(self.perturb))
        constraint_kind(self.constrain)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: expected 1 or more")


def read_evaluation_data(
    path: str | Path,
    limit: int | None = None,
    model: str | None = None,
    modalities: Sequence[str] = ("text",),
) -> list[Example]:
    """The examples of an evaluation file; every problem is reported at once, by line and field (a media part
    that ``model``, of ``modalities``, does not take is one)."""
    report = read_examples(path, model_id=f"model {model}" if model else "the model", modalities=modalities)
    if report.errors:
        raise DatasetError(f"{path}: {len(report.errors)} problem(s); nothing was evaluated", report.errors)
    return report.examples[:limit] if limit else report.examples


def read_prompts(path: str | Path) -> list[Example]:
    """Evaluation or production prompts: dataset lines whose final model turn is optional (their text is what is
    used: media parts are taken as they are)."""
    report = read_examples(path, require_model_turn=False, modalities=ALL_MODALITIES)
    if report.errors:
        raise DatasetError(f"{path}: {len(report.errors)} problem(s)", report.errors)
    return report.examples


def training_file(candidates: Sequence[Candidate], explicit: str | None) -> str | None:
    """The training file given, else the one a tuned candidate was trained on (if it is still there)."""
    if explicit:
        if not Path(explicit).is_file():
            raise DatasetError(f"{explicit}: no such file")
        return explicit
    for c in candidates:
        if is_tuned_dir(c.model):
            train = read_manifest(c.model).get("spec", {}).get("train")
            if train and Path(train).is_file():
                return str(train)
    return None


def compare_models(
    data: str | Path,
    candidates: Sequence[Candidate],
    options: Options | None = None,
    events: Events | None = None,
) -> Comparison:
    """Run every candidate over ``data``; the report is written by ``report.write_report``."""
    options = options or Options()
    if not candidates:
        raise ConfigError("give at least one --candidate NAME=MODEL[:PROMPT.yaml]")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ConfigError(f"candidate names must differ: {', '.join(names)}")
    from tunery.serving.multimodal import served_modalities

    examples: list[Example] = []
    for model in dict.fromkeys(c.model for c in candidates):  # each model checks the media it is given
        examples = read_evaluation_data(data, options.limit, model, served_modalities(model))
    train = training_file(candidates, options.train)
    label_sources = [s for c in candidates for s in c.prompt.shots]
    if train:
        label_sources += read_examples(train, modalities=ALL_MODALITIES).examples
    known = [label for c in candidates if is_tuned_dir(c.model) for label in read_manifest(c.model).get("labels") or []]
    task = resolve_task(options.task, examples, label_sources, str(data), known)
    forms = measured_weights(options.weights)
    runs = [_run_candidates(form, candidates, examples, task, options, str(data), events, i == 0) for i, form in
            enumerate(forms)]  # fmt: skip
    evaluations = [with_reference(each) for each in zip(*runs, strict=True)]
    advice = None
    if train and options.advice:
        from tunery.evaluation.analysis import data_advice

        tokenizer, max_length = _training_tokenizer(candidates, options.max_length)
        advice = data_advice(train, examples, tokenizer, max_length)
    return Comparison(str(data), task, evaluations, options.pricing, advice)


def _run_candidates(
    weights: str,
    candidates: Sequence[Candidate],
    examples: Sequence[Example],
    task: Task,
    options: Options,
    data: str,
    events: Events | None,
    perturb: bool,
) -> list[Evaluation]:
    """Every candidate with ``weights`` (each model loaded once; perturbations only if ``perturb``)."""
    from tunery.serving.engine import Engine  # torch: only when a model runs

    evaluations = []
    engines: dict[str, Engine] = {}
    perturbations = options.perturb if perturb else ()
    for i, candidate in enumerate(candidates):
        engine = engines.get(candidate.model) or Engine(candidate.model, weights=weights)
        engines[candidate.model] = engine
        config = constrained(_config(engine, examples, options), options.constrain, task, engine.tokenizer)
        evaluations.append(
            evaluate_engine(engine, examples, candidate, task, config, perturbations, options.seed, data, events)
        )
        if all(c.model != candidate.model for c in candidates[i + 1 :]):
            del engines[candidate.model]  # free the weights before the next model loads
    return evaluations


def _config(engine: Engine, examples: Sequence[Example], options: Options) -> GenerationConfig:
    if options.max_output_tokens:
        return GenerationConfig(max_output_tokens=options.max_output_tokens)
    return output_budget(engine, examples)


def constraint_kind(constrain: str | None) -> tuple[str, Path | None] | None:
    """``--constrain``: ``labels``, ``none`` (free text), or ``schema=FILE`` (also ``schema:FILE``, ``schema FILE``)
    → (kind, file); None when not given."""
    if constrain is None:
        return None
    text = constrain.strip()
    if text in ("labels", "none"):
        return text, None
    for sep in ("=", ":", " "):
        kind, found, path = text.partition(sep)
        if found and kind == "schema" and path.strip():
            return "schema", Path(path.strip())
    raise ConfigError(
        f"--constrain {constrain!r}: expected labels, none or schema=FILE (a JSON file with a responseSchema)"
    )


def constrained(config: GenerationConfig, constrain: str | None, task: Task, tokenizer: Any) -> GenerationConfig:
    """``config`` with the answer restricted as ``--constrain`` asks: to the task's labels, or to a schema."""
    import dataclasses

    from tunery.serving.gemini import generation_config

    parsed = constraint_kind(constrain)
    if parsed is None:
        return config
    kind, path = parsed
    fields: dict[str, Any] = {"maxOutputTokens": config.max_output_tokens}
    if kind == "none":
        fields["responseMimeType"] = "text/plain"
    elif kind == "labels":
        if task.kind != "classification" or not task.labels:
            raise ConfigError(f"--constrain labels needs a classification task with labels; this one is {task.kind}")
        longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in task.labels)
        fields = label_config(task.labels, max(config.max_output_tokens, longest + 2))
    elif kind == "schema":
        assert path is not None
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--constrain schema={path}: cannot read a JSON schema: {exc}") from None
        fields.update({"responseMimeType": "application/json", "responseSchema": schema})
    return dataclasses.replace(config, **dataclasses.asdict(generation_config(fields, f"--constrain {constrain}")))


def _training_tokenizer(candidates: Sequence[Candidate], max_length: int) -> tuple[Any, int]:
    """The tokenizer and maxLength training used (a tuned candidate's), else the first candidate's, for the
    truncation check."""
    from tunery.models.loading import load_tokenizer
    from tunery.models.sources import resolve_base

    for c in candidates:
        if is_tuned_dir(c.model):
            tuned_max = read_manifest(c.model).get("hyperParameters", {}).get("maxLength") or max_length
            return load_tokenizer(c.model), int(tuned_max)
    return load_tokenizer(resolve_base(candidates[0].model).path), max_length


def save_comparison(comparison: Comparison, output: str | Path, single: bool = False) -> Path:
    """Each candidate's evaluation in its own folder (``single``: the only one at the top), and
    ``comparison.json`` for them all."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for e in comparison.evaluations:
        e.save(output if single else output / "candidates" / slug(e.candidate.name))
    path = output / SUMMARY_FILE
    path.write_text(json.dumps(comparison.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "candidate"
