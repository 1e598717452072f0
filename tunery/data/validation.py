"""Read a JSONL dataset and report every problem at once, as ``FILE:LINE: field: message``."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunery.data.formats import Example, parse_example
from tunery.data.tokenize import Encoded, TemplateError, encode
from tunery.errors import DatasetError


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}: {self.field}: {prefix}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message, "severity": self.severity}


@dataclass
class ValidationReport:
    """What one file holds: its valid examples, their encodings (when a tokenizer was given), every problem."""

    path: str
    examples: list[Example] = field(default_factory=list)
    encoded: list[Encoded] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.errors:
            n = len(self.errors)
            raise DatasetError(f"{self.path}: {n} problem{'s' * (n != 1)}; nothing was tuned", self.errors)


def read_examples(
    path: str | Path,
    *,
    tokenizer: Any = None,
    max_length: int = 1024,
    model_id: str = "the model",
    modalities: Collection[str] = ("text",),
    require_model_turn: bool = True,
) -> ValidationReport:
    """Parse and check every line of ``path``; with a tokenizer, also encode and check lengths."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise DatasetError(f"{name}: no such file")
    report = ValidationReport(path=name)
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            problems = _check_line(raw, number, report, tokenizer, max_length, model_id, modalities, require_model_turn)
            report.problems += [Problem(name, number, f, m, s) for f, m, s in problems]
    if not report.examples and not report.errors:
        report.problems.append(Problem(name, 0, "file", "no examples; the file is empty"))
    return report


def _check_line(
    raw: bytes,
    number: int,
    report: ValidationReport,
    tokenizer: Any,
    max_length: int,
    model_id: str,
    modalities: Collection[str],
    require_model_turn: bool,
) -> list[tuple[str, str, Literal["error", "warning"]]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [("line", f"not UTF-8 text (byte {exc.start})", "error")]
    if not text.strip():
        return []
    try:
        obj = json.loads(text.rstrip("\r\n"))  # with the newline, an error at the line's end reads "column 1"
    except json.JSONDecodeError as exc:
        return [("line", f"invalid JSON: {exc.msg} (column {exc.colno})", "error")]
    example, problems = parse_example(obj, number, require_model_turn)
    found: list[tuple[str, str, Literal["error", "warning"]]] = [(f, m, "error") for f, m in problems]
    if example is None:
        return found
    for field_name, part in _media_parts(example, obj):
        if part.modality not in modalities:
            found.append(
                (
                    field_name,
                    f"{model_id} takes {', '.join(modalities)} only, not {part.modality} ({part.mime_type})",
                    "error",
                )
            )
    if found:
        return found
    if tokenizer is not None:
        try:
            encoded = encode(tokenizer, example, max_length)
        except TemplateError as exc:
            return [("contents", f"{model_id}: {exc}", "error")]
        if encoded.trained_tokens == 0:
            return [("contents", f"trains zero tokens after truncation to maxLength {max_length}", "error")]
        if encoded.truncated:
            lost = encoded.full_length - len(encoded.input_ids)
            found.append(
                (
                    "contents",
                    f"example is {encoded.full_length} tokens, longer than maxLength {max_length}; "
                    f"it is truncated ({lost} tokens dropped)",
                    "warning",
                )
            )
        report.encoded.append(encoded)
    report.examples.append(example)
    return found


def _media_parts(example: Example, obj: dict) -> list[tuple[str, Any]]:
    key = "contents" if "contents" in obj else "messages"
    return [
        (f"{key}[{i}].parts[{j}].{part.kind}", part)
        for i, turn in enumerate(example.turns)
        for j, part in enumerate(turn.parts)
        if part.kind != "text"
    ]
