"""Which task an evaluation set is, and how one answer is scored for it.

``auto`` infers the task from the gold answers: all JSON objects → extraction; all short one-line
answers from a small closed set, or from the closed set of labels the training file (or a tuned model's
``tunery.json``) covers, however many there are → classification; anything else → generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunery.data.formats import Example
from tunery.data.validation import Problem
from tunery.errors import ConfigError, DatasetError
from tunery.evaluation import metrics

TaskKind = Literal["classification", "extraction", "generation"]
TASKS: tuple[str, ...] = ("auto", "classification", "extraction", "generation")
MAX_LABELS = 50  # a closed set larger than this reads as free text
MAX_LABEL_WORDS = 4
MAX_LABEL_CHARS = 64
MIN_PER_LABEL = 2  # a training file's answers are a closed set when each one recurs (on average) this often
PRIMARY = {"classification": "accuracy", "extraction": "field_f1", "generation": "rougeL"}


ALL_MODALITIES = ("text", "image", "audio", "pdf", "video")  # reading a file for its text only (labels, shots)


@dataclass(frozen=True)
class Task:
    """A task kind and, for classification, its closed label set."""

    kind: TaskKind
    labels: tuple[str, ...] = field(default=())

    @property
    def primary_metric(self) -> str:
        """The one quality number robustness drops and error analysis are measured on."""
        return PRIMARY[self.kind]

    def label_of(self, output: str) -> str | None:
        """The label an answer names (classification only)."""
        return metrics.match_label(output, self.labels) if self.kind == "classification" else None

    def score(self, target: str, output: str) -> float:
        """One example's quality, 0 to 1: correct label, field F1, or ROUGE-L."""
        if self.kind == "classification":
            return float(self.label_of(output) == target)
        if self.kind == "extraction":
            return metrics.extraction_score(target, output)
        return metrics.rouge_l(target, output)

    def metrics(self, targets: Sequence[str], outputs: Sequence[str]) -> dict[str, Any]:
        if self.kind == "classification":
            labels = [self.label_of(o) for o in outputs]
            return metrics.classification_metrics(targets, labels, self.labels)
        if self.kind == "extraction":
            return metrics.extraction_metrics(targets, outputs)
        return metrics.generation_metrics(targets, outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels)}


def infer_kind(targets: Sequence[str], known_labels: Sequence[str] = ()) -> TaskKind:
    """The task the gold answers look like (see the module docstring); ``known_labels`` is the closed label
    set of the training data, if it has one (``closed_label_set``)."""
    if targets and all(metrics.parse_json_object(t) is not None for t in targets):
        return "extraction"
    distinct = {t.strip() for t in targets}
    short = all(_is_label_like(t) for t in distinct)
    if targets and short and (len(distinct) <= MAX_LABELS or (known_labels and distinct <= set(known_labels))):
        return "classification"
    return "generation"


def closed_label_set(targets: Sequence[str]) -> tuple[str, ...]:
    """The labels of training answers that form a closed set (short one-line answers, each recurring), sorted;
    () when they do not (free text, or too few examples per answer to tell)."""
    distinct = {t.strip() for t in targets}
    if not targets or not all(_is_label_like(t) for t in distinct) or len(targets) < MIN_PER_LABEL * len(distinct):
        return ()
    return tuple(sorted(distinct))


def training_labels(path: str | Path | None) -> list[str] | None:
    """The closed label set of a training file (what a tuned classification model records in ``tunery.json``),
    or None: no file, not a classification file, or a file that does not read."""
    if not path or not Path(path).is_file():
        return None
    from tunery.data.validation import read_examples

    try:
        labels = closed_label_set([e.target for e in read_examples(path, modalities=ALL_MODALITIES).examples])
    except (OSError, ValueError, DatasetError):
        return None
    return list(labels) or None


def training_schema(path: str | Path | None) -> dict[str, Any] | None:
    """The closed schema of a training file whose answers are all JSON objects with the same keys and value types
    (what a tuned extraction model keeps in ``tunery.json``): Gemini's ``responseSchema``, its properties in the
    answers' order, required where every answer has them, nullable where one is null; and ``separators``, how
    the answers space their JSON (``[", ", ": "]``; ``[",", ":"]`` compact). None: no file, an answer that is not
    a JSON object, a key whose values differ in type, or more than ``MAX_SCHEMA_KEYS`` keys at one level."""
    if not path or not Path(path).is_file():
        return None
    from tunery.data.validation import read_examples

    try:
        targets = [e.target.strip() for e in read_examples(path, modalities=ALL_MODALITIES).examples]
    except (OSError, ValueError, DatasetError):
        return None
    objects = [metrics.parse_json_object(t) for t in targets]
    if len(objects) < MIN_PER_LABEL or any(o is None for o in objects):
        return None
    schema = value_schema(objects)
    if schema is None:
        return None
    return {"responseSchema": schema, "separators": _separators(targets, objects)}


MAX_SCHEMA_KEYS = 32
_JSON_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def value_schema(values: Sequence[Any]) -> dict[str, Any] | None:
    """The one schema the (non-null) ``values`` share, in Gemini's OpenAPI subset; None when they differ."""
    kinds = {_JSON_KINDS[type(v)] for v in values if v is not None}
    kinds = {"number"} if kinds == {"integer", "number"} else kinds
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    present = [v for v in values if v is not None]
    schema: dict[str, Any] = {"type": kind.upper()}
    if kind == "object":
        keys = list(dict.fromkeys(k for v in present for k in v))
        if len(keys) > MAX_SCHEMA_KEYS:
            return None
        properties = {k: value_schema([v[k] for v in present if k in v]) for k in keys}
        if any(p is None for p in properties.values()):
            return None
        required = [k for k in keys if all(k in v for v in present)]
        schema.update({"properties": properties, "required": required, "propertyOrdering": keys})
    elif kind == "array":
        items = value_schema([item for v in present for item in v])
        if items is None:
            return None
        schema["items"] = items
    if len(present) < len(values):
        schema["nullable"] = True
    return schema


def _separators(targets: Sequence[str], objects: Sequence[Any]) -> list[str] | None:
    """How every answer spaces its JSON, when they all do it as ``json.dumps`` does (spaced or compact)."""
    import json

    for separators in ((", ", ": "), (",", ":")):
        if all(t in (json.dumps(o, separators=separators), json.dumps(o, separators=separators, ensure_ascii=False))
               for t, o in zip(targets, objects, strict=True)):  # fmt: skip
            return list(separators)
    return None


def _is_label_like(text: str) -> bool:
    text = text.strip()
    return bool(text) and "\n" not in text and len(text) <= MAX_LABEL_CHARS and len(text.split()) <= MAX_LABEL_WORDS


def resolve_task(
    kind: str,
    examples: Sequence[Example],
    label_sources: Sequence[Example] = (),
    path: str = "evaluation data",
    known_labels: Sequence[str] = (),
) -> Task:
    """The task of ``examples``; ``label_sources`` (a training file, prompt shots) and ``known_labels`` (a tuned
    model's recorded label set) add labels the evaluation set lacks."""
    if kind not in TASKS:
        raise ConfigError(f"--task {kind!r}: expected one of {', '.join(TASKS)}")
    targets = [e.target for e in examples]
    closed = set(closed_label_set([e.target for e in label_sources])) | set(known_labels)
    resolved: TaskKind = infer_kind(targets, sorted(closed)) if kind == "auto" else kind  # type: ignore[assignment]
    if resolved == "extraction":
        _check_json_targets(examples, path)
    labels: tuple[str, ...] = ()
    if resolved == "classification":
        found = {t.strip() for t in targets} | {e.target.strip() for e in label_sources} | set(known_labels)
        labels = tuple(sorted(found))
    return Task(resolved, labels)


def _check_json_targets(examples: Sequence[Example], path: str) -> None:
    """Extraction needs every gold answer to be a JSON object; report every one that is not."""
    bad = [
        Problem(path, e.line, "target", f"not a JSON object: {e.target[:60]!r}")
        for e in examples
        if metrics.parse_json_object(e.target) is None
    ]
    if bad:
        raise DatasetError(f"{path}: --task extraction: {len(bad)} gold answer(s) are not JSON objects", bad)
