"""Read a JSONL dataset and report every problem at once, as ``FILE:LINE: field: message``.

The file is read a line at a time and every line is bounded before it is parsed, so hostile input is a
problem at its line, quickly, in bounded memory: a line longer than ``TUNERY_MAX_LINE_BYTES`` (8 MiB) is
skipped unread, JSON nested deeper than ``MAX_DEPTH`` is refused before parsing, numbers longer than
``MAX_NUMBER_DIGITS`` and ``NaN``/``Infinity`` are invalid JSON, lone surrogates are invalid text, and an
example with more than ``TUNERY_MAX_EXAMPLE_CHARS`` characters of text is refused before the tokenizer sees
it. A file may be a path, a FIFO or a pipe (``tunery datasets validate -`` reads standard input).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from tunery import settings
from tunery.data.formats import Example, parse_example
from tunery.data.media import MediaSource
from tunery.data.tokenize import Encoded, TemplateError, encode
from tunery.errors import DatasetError

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects in one line (a dataset line needs about 6)."""
MAX_NUMBER_DIGITS = 4300
"""Longest integer in a line (Python's own limit for turning digits into an int)."""
MAX_MESSAGE_CHARS = 300
"""Longest problem message; user text quoted in a message is cut to fit."""
MAX_PROBLEMS = 1000
"""Errors after which the check stops (the file is refused anyway), and most warnings a report lists."""
SKIP_CHUNK = 2**20
TOO_DEEP = f"JSON nested more than {MAX_DEPTH} deep (arrays and objects inside each other); at most {MAX_DEPTH}"
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


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
    path: str | Path | IO[bytes],
    *,
    tokenizer: Any = None,
    max_length: int = 1024,
    model_id: str = "the model",
    modalities: Collection[str] = ("text",),
    require_model_turn: bool = True,
    name: str | None = None,
    max_line_bytes: int | None = None,
    max_example_chars: int | None = None,
    media_source: MediaSource | None = None,
) -> ValidationReport:
    """Parse and check every line of ``path`` (a file, a FIFO, or an open binary stream named ``name``); with a
    tokenizer, also encode and check lengths. The bounds default to the settings. ``media_source`` says where
    ``fileData`` URIs resolve (the server passes one whose ``resolve_file`` knows the uploader's ``files/{id}``);
    None: the file's own folder."""
    line_limit = max_line_bytes or settings.max_line_bytes()
    char_limit = max_example_chars or settings.max_example_chars()
    if isinstance(path, (str, Path)):
        source = Path(path)
        name = name or str(source)
        if not source.exists():
            raise DatasetError(f"{name}: no such file")
        if source.is_dir():
            raise DatasetError(f"{name}: is a directory, not a JSONL file")
        try:
            with source.open("rb") as fh:
                return read_examples(
                    fh,
                    tokenizer=tokenizer,
                    max_length=max_length,
                    model_id=model_id,
                    modalities=modalities,
                    require_model_turn=require_model_turn,
                    name=name,
                    max_line_bytes=line_limit,
                    max_example_chars=char_limit,
                    media_source=media_source,
                )
        except OSError as exc:
            raise DatasetError(f"{name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    name = name or getattr(path, "name", None) or "<stream>"
    report = ValidationReport(path=name)
    errors = unlisted = 0
    for number, raw, size in _lines(path, line_limit):
        if raw is None:
            problems: Found = [
                (
                    "line",
                    f"line is {size} bytes, longer than the limit of {line_limit} (TUNERY_MAX_LINE_BYTES)",
                    "error",
                )
            ]
        else:
            problems = _check_line(
                raw, number, report, tokenizer, max_length, model_id, modalities, require_model_turn, char_limit
            )
        for f, m, severity in problems:
            if severity == "error" or len(report.problems) < MAX_PROBLEMS:
                report.problems.append(Problem(name, number, _safe(f, 200), _safe(m), severity))
            else:
                unlisted += 1
        errors += sum(1 for *_, severity in problems if severity == "error")
        if errors >= MAX_PROBLEMS:
            stop = f"stopped at line {number} after {errors} errors; the rest of the file was not checked"
            report.problems.append(Problem(name, number, "file", stop))
            break
    if unlisted:
        report.problems.append(Problem(name, 0, "file", f"{unlisted} more warnings not listed", "warning"))
    if not report.examples and not report.errors:
        report.problems.append(Problem(name, 0, "file", "no examples; the file is empty"))
    return report


def _lines(fh: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """``(number, line, size)`` for each line; ``line`` is None for one over ``limit`` bytes (its newline not
    counted), which is read past in chunks, never held whole."""
    number = 0
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        number += 1
        if raw.endswith(b"\n") or len(raw) <= limit:
            yield number, raw, len(raw)
            continue
        size = len(raw)
        while True:
            chunk = fh.readline(SKIP_CHUNK)
            size += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
        yield number, None, size - (1 if chunk.endswith(b"\n") else 0)


def _safe(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, lone surrogates written as ``\\udxxx``: printable and encodable."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _too_deep(raw: bytes, limit: int) -> bool:
    """Whether the JSON in ``raw`` nests arrays and objects deeper than ``limit``, without parsing it: strings
    are removed, then matched innermost bracket pairs ``limit`` times; pairs left over are deeper. (Unbalanced
    brackets are left for the parser to report.)"""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            return False
        brackets = shorter
    return b"[]" in brackets or b"{}" in brackets


class _NotJson(ValueError):
    """Something ``json.loads`` takes that JSON does not (NaN), or a number too long to read."""


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _NotJson(f"a number with {len(digits)} digits; at most {MAX_NUMBER_DIGITS}")
    return int(digits)


def _parse_constant(constant: str) -> Any:
    raise _NotJson(f"{constant} is not JSON")


def loads(text: str) -> Any:
    """``json.loads`` of one bounded line, strict: no ``NaN``/``Infinity``, integers of at most
    ``MAX_NUMBER_DIGITS`` digits. Raises ``ValueError`` (``json.JSONDecodeError`` with a position)."""
    return json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)


Found = list[tuple[str, str, Literal["error", "warning"]]]


def _check_line(
    raw: bytes,
    number: int,
    report: ValidationReport,
    tokenizer: Any,
    max_length: int,
    model_id: str,
    modalities: Collection[str],
    require_model_turn: bool,
    max_chars: int,
) -> Found:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [("line", f"not UTF-8 text (byte {exc.start})", "error")]
    if not text.strip():
        return []
    if _too_deep(raw, MAX_DEPTH):
        return [("line", TOO_DEEP, "error")]
    try:
        obj = loads(text.rstrip("\r\n"))  # with the newline, an error at the line's end reads "column 1"
    except json.JSONDecodeError as exc:
        return [("line", f"invalid JSON: {exc.msg} (column {exc.colno})", "error")]
    except _NotJson as exc:
        return [("line", f"invalid JSON: {exc}", "error")]
    except RecursionError:  # unbalanced brackets the depth check left to the parser
        return [("line", TOO_DEEP, "error")]
    example, problems = parse_example(obj, number, require_model_turn)
    found: Found = [(f, m, "error") for f, m in problems]
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
    chars = sum(len(turn.text) for turn in example.turns) + len(example.system or "")
    if chars > max_chars:
        key = "contents" if "contents" in obj else "messages"
        found.append(
            (
                key,
                f"the example holds {chars} characters of text; at most {max_chars} (TUNERY_MAX_EXAMPLE_CHARS)",
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
