"""Read a JSONL dataset and report every problem at once, as ``FILE:LINE: field: message``.

The file is read a line at a time and every line is bounded before it is parsed, so hostile input is a
problem at its line, quickly, in bounded memory: a line longer than ``TUNERY_MAX_LINE_BYTES`` (8 MiB) is
skipped unread, JSON nested deeper than ``MAX_DEPTH`` is refused before parsing, numbers longer than
``MAX_NUMBER_DIGITS`` and ``NaN``/``Infinity`` are invalid JSON, lone surrogates are invalid text, and an
example with more than ``TUNERY_MAX_EXAMPLE_CHARS`` characters of text is refused before the tokenizer sees
it. A file may be a path, a FIFO or a pipe (``tunery datasets validate -`` reads standard input).

Media parts (#15) are each opened and probed — headers only, nothing decoded — where they resolve
(``media_source``: by default the JSONL file's folder): a missing, unreadable, truncated or mislabelled file is a
problem at its part's field (``contents[0].parts[1].fileData.fileUri: file not found: img/cat.png``), as is a
modality the model does not take (PDFs are taken by every model: as text, or as page images). Each example is
held to the managed-service limits below; a PDF page without a text layer is a warning for a model that reads
PDFs as text.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from tunery import settings
from tunery.data.documents import takes_pdf
from tunery.data.formats import Example, Part, Preference, is_preference, parse_example, parse_preference
from tunery.data.media import MediaError, MediaInfo, MediaSource, open_media, probe
from tunery.data.stats import EncodedWithMedia, ExampleMedia, PreferenceTally, SupervisedTally
from tunery.data.tokenize import Encoded, EncodedPair, TemplateError, encode, encode_pair
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
MIB = 2**20
# Per-example media limits, as managed tuning documents them (Vertex AI supervised tuning for Gemini):
MAX_IMAGES_PER_EXAMPLE = 30
MAX_IMAGE_BYTES = 20 * MIB
"""Each image."""
MAX_AUDIO_PER_EXAMPLE = 1
MAX_AUDIO_SECONDS = 60 * 60
MAX_AUDIO_BYTES = 100 * MIB
MAX_PDFS_PER_EXAMPLE = 4
MAX_PDF_PAGES = 300
"""Each PDF."""
MAX_PDF_BYTES = 20 * MIB
"""Each PDF."""
PER_EXAMPLE = {"image": MAX_IMAGES_PER_EXAMPLE, "audio": MAX_AUDIO_PER_EXAMPLE, "pdf": MAX_PDFS_PER_EXAMPLE}
NOUNS = {"image": ("image", "images"), "audio": ("audio file", "audio files"), "pdf": ("PDF", "PDFs")}
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
    media: list[ExampleMedia] = field(default_factory=list)
    """What each valid example's media parts hold (from their headers), in the order of ``examples``."""
    objective: str | None = "SFT"
    """``SFT`` (supervised examples) or ``DPO`` (preference pairs): what every line must be; None: the first
    line decides."""
    pairs: list[Preference] = field(default_factory=list)
    """A preference file's valid pairs, and their encodings in ``encoded_pairs`` (with a tokenizer)."""
    encoded_pairs: list[EncodedPair] = field(default_factory=list)
    keep: bool = True
    """False: a streaming check. The valid examples are counted (``count``) and tallied for the statistics
    (``tally``), not kept: memory stays flat however long the file is."""
    count: int = 0
    """Valid examples (or pairs) read."""
    tally: SupervisedTally | PreferenceTally | None = None
    """A streaming check with a tokenizer: the statistics' counts of every valid example (or pair); a kept read
    has its encodings, from which ``stats.tuning_data_stats`` counts."""
    lines: int = 0
    """Lines checked."""
    stopped_at: tuple[int, int] | None = None
    """``(line, bytes)`` where a check with a deadline stopped: the lines from there on were not read."""

    def add(self, example: Example, encoded: Encoded | None, media: ExampleMedia | None) -> None:
        self.count += 1
        if encoded is not None and not self.keep:
            self.tally = self.tally or SupervisedTally()
            self.tally.add(encoded)
        if not self.keep:
            return
        self.examples.append(example)
        if encoded is not None:
            self.encoded.append(encoded)
        if media is not None:
            self.media.append(media)

    def add_pair(self, pair: Preference, encoded: EncodedPair | None) -> None:
        self.count += 1
        if encoded is not None and not self.keep:
            self.tally = self.tally or PreferenceTally()
            self.tally.add(encoded)
        if not self.keep:
            return
        self.pairs.append(pair)
        if encoded is not None:
            self.encoded_pairs.append(encoded)

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
    objective: str | None = "SFT",
    keep: bool = True,
    deadline: float | None = None,
) -> ValidationReport:
    """Parse and check every line of ``path`` (a file, a FIFO, or an open binary stream named ``name``); with a
    tokenizer, also encode and check lengths. The bounds default to the settings. ``media_source`` says where
    ``fileData`` URIs resolve (the server passes one whose ``resolve_file`` knows the uploader's ``files/{id}``);
    None: the file's own folder. ``objective``: ``SFT`` wants supervised examples, ``DPO`` preference pairs (Vertex,
    OpenAI or TRL shape, ``formats.parse_preference``), None takes the kind of the file's first line. ``keep=False``
    checks in flat memory (``ValidationReport.keep``); ``deadline`` (a ``time.monotonic()`` value) stops the check
    there, noted in ``stopped_at``."""
    line_limit = max_line_bytes or settings.max_line_bytes()
    char_limit = max_example_chars or settings.max_example_chars()
    if isinstance(path, (str, Path)):
        source = Path(path)
        name = name or str(source)
        if not source.exists():
            raise DatasetError(f"{name}: no such file")
        if source.is_dir():
            raise DatasetError(f"{name}: is a directory, not a JSONL file")
        if media_source is None:
            media_source = own_folder(source)
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
                    objective=objective,
                    keep=keep,
                    deadline=deadline,
                )
        except OSError as exc:
            raise DatasetError(f"{name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    name = name or getattr(path, "name", None) or "<stream>"
    media = media_source or MediaSource()  # a stream has no folder: inline data, files/{id} and roots only
    report = ValidationReport(path=name, objective=objective, keep=keep)
    errors = unlisted = checked = 0
    for number, raw, size in _lines(path, line_limit):
        if deadline is not None and time.monotonic() > deadline:
            report.stopped_at = (number, checked)
            break
        checked += size
        report.lines = number
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
                raw, number, report, tokenizer, max_length, model_id, modalities, require_model_turn, char_limit, media
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
    if not report.count and not report.errors and report.stopped_at is None:
        report.problems.append(Problem(name, 0, "file", "no examples; the file is empty"))
    return report


def own_folder(path: Path) -> MediaSource:
    """Where the media of a dataset file resolve when the caller says nothing: the file's folder; but a file in
    the server's upload folder (every tenant's uploads) has none: paths there resolve under TUNERY_DATA_ROOT only.
    (The server passes its own source, which also knows the uploader's ``files/{id}``.)"""
    folder = path.resolve().parent
    if folder.is_relative_to(settings.files_dir().resolve()):
        return MediaSource(root=settings.data_root())
    return MediaSource(base=folder)


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
    source: MediaSource,
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
    kind = "DPO" if is_preference(obj) else "SFT"
    report.objective = report.objective or kind
    if kind != report.objective:
        return [("line", MISMATCH[report.objective], "error")]
    if kind == "DPO":
        return _check_pair(obj, number, report, tokenizer, max_length, model_id, max_chars)
    example, problems = parse_example(obj, number, require_model_turn)
    found: Found = [(f, m, "error") for f, m in problems]
    if example is None:
        return found
    media_found, media = _check_media(example, obj, model_id, modalities, source)
    found += media_found
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
    if any(severity == "error" for *_, severity in found):
        return found
    if tokenizer is not None:
        try:
            encoded = encode(tokenizer, example, max_length, source)
        except TemplateError as exc:
            return [*found, ("contents", f"{model_id}: {exc}", "error")]
        except DatasetError as exc:  # a PDF whose text cannot be read (its header could)
            return [*found, ("contents", str(exc), "error")]
        if encoded.trained_tokens == 0:
            return [*found, ("contents", f"trains zero tokens after truncation to maxLength {max_length}", "error")]
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
        if media is not None:
            encoded, warning = _with_media(encoded, media, modalities, max_length)
            found += warning
    report.add(example, encoded if tokenizer is not None else None, media)
    return found


MISMATCH = {
    "SFT": "a preference pair (two answers to compare) in supervised data; tune preference data with DPO "
    "(--method dpo)",
    "DPO": "a supervised example in preference data; expected a pair: Vertex contents + completions, OpenAI input + "
    "preferred_output + non_preferred_output, or TRL prompt + chosen + rejected",
}


def _check_pair(
    obj: Any, number: int, report: ValidationReport, tokenizer: Any, max_length: int, model_id: str, max_chars: int
) -> Found:
    """One preference line: its shape (``parse_preference``), its size, and with a tokenizer each side's length:
    a side cut by ``maxLength`` is a warning naming it, a side left with no answer token an error."""
    pair, problems = parse_preference(obj, number)
    found: Found = [(f, m, "error") for f, m in problems]
    if pair is None:
        return found
    chars = sum(len(t.text) for t in pair.prompt.turns) + len(pair.prompt.system or "")
    chars += len(pair.chosen) + len(pair.rejected)
    if chars > max_chars:
        message = f"the pair holds {chars} characters of text; at most {max_chars} (TUNERY_MAX_EXAMPLE_CHARS)"
        return [("line", message, "error")]
    if tokenizer is not None:
        try:
            encoded = encode_pair(tokenizer, pair, max_length)
        except TemplateError as exc:
            return [("line", f"{model_id}: {exc}", "error")]
        for side, field_name, one in zip(("chosen", "rejected"), pair.sides, (encoded.chosen, encoded.rejected)):
            found += _side_length(side, field_name, one, max_length)
        if any(severity == "error" for *_, severity in found):
            return found
    report.add_pair(pair, encoded if tokenizer is not None else None)
    return found


def _side_length(side: str, field_name: str, encoded: Encoded, max_length: int) -> Found:
    if encoded.trained_tokens == 0:
        message = (
            f"the {side} side is {encoded.full_length} tokens; after truncation to maxLength {max_length} none of its "
            f"answer is left (raise maxLength or shorten the prompt)"
        )
        return [(field_name, message, "error")]
    if encoded.truncated:
        lost = encoded.full_length - len(encoded.input_ids)
        message = (
            f"the {side} side is {encoded.full_length} tokens, longer than maxLength {max_length}; its answer is "
            f"truncated ({lost} tokens dropped)"
        )
        return [(field_name, message, "warning")]
    return []


def _media_parts(example: Example, obj: dict) -> list[tuple[str, Part]]:
    key = "contents" if "contents" in obj else "messages"
    return [
        (f"{key}[{i}].parts[{j}].{part.kind}", part)
        for i, turn in enumerate(example.turns)
        for j, part in enumerate(turn.parts)
        if part.kind != "text"
    ]


def _takes(modalities: Collection[str], modality: str) -> bool:
    return modality in modalities or (modality == "pdf" and takes_pdf(modalities))


def _check_media(
    example: Example, obj: dict, model_id: str, modalities: Collection[str], source: MediaSource
) -> tuple[Found, ExampleMedia | None]:
    """Each media part opened and probed (headers only) and held to the per-file limits, then the example to the
    per-example counts; the media found (None for an example without media parts)."""
    parts = _media_parts(example, obj)
    if not parts:
        return [], None
    found: Found = []
    infos: list[MediaInfo] = []
    seen: dict[str, list[str]] = {}  # modality -> the fields of its parts, in order
    for field_name, part in parts:
        if not _takes(modalities, part.modality):
            found.append(
                (
                    field_name,
                    f"{model_id} takes {', '.join(modalities)} only, not {part.modality} ({part.mime_type})",
                    "error",
                )
            )
            continue
        seen.setdefault(part.modality, []).append(field_name)
        try:
            info = probe(open_media(part, source))
        except MediaError as exc:
            at = exc.field or ("fileUri" if part.kind == "fileData" else "data")
            found.append((f"{field_name}.{at}", str(exc), "error"))
            continue
        except Exception as exc:  # a decoder library's own error on hostile bytes: still this part's problem
            at = "fileUri" if part.kind == "fileData" else "data"
            found.append((f"{field_name}.{at}", f"unreadable {part.mime_type} ({type(exc).__name__}: {exc})", "error"))
            continue
        infos.append(info)
        found += [(field_name, message, "error") for message in _over_file_limits(info)]
        if info.modality == "pdf" and info.textless_pages and "image" not in modalities:
            found.append((field_name, _textless_warning(info, model_id), "warning"))
    for modality, fields in seen.items():
        most = PER_EXAMPLE.get(modality)
        if most is not None and len(fields) > most:
            one, many = NOUNS[modality]
            found.append(
                (
                    fields[most],
                    f"{len(fields)} {many} in this example; at most {most} {one if most == 1 else many} per example",
                    "error",
                )
            )
    return found, ExampleMedia(tuple(infos))


def _over_file_limits(info: MediaInfo) -> list[str]:
    """What is over a per-file limit in one probed part."""
    size = _size(info.size_bytes)
    out = []
    if info.modality == "image" and info.size_bytes > MAX_IMAGE_BYTES:
        out.append(f"the image is {size}; at most {_size(MAX_IMAGE_BYTES)} per image")
    if info.modality == "audio":
        if info.size_bytes > MAX_AUDIO_BYTES:
            out.append(f"the audio file is {size}; at most {_size(MAX_AUDIO_BYTES)} per audio file")
        if info.seconds > MAX_AUDIO_SECONDS:
            out.append(
                f"the audio is {_duration(info.seconds)} long; at most {_duration(MAX_AUDIO_SECONDS)} per audio file"
            )
    if info.modality == "pdf":
        if info.size_bytes > MAX_PDF_BYTES:
            out.append(f"the PDF is {size}; at most {_size(MAX_PDF_BYTES)} per PDF")
        if info.pages > MAX_PDF_PAGES:
            out.append(f"the PDF has {info.pages} pages; at most {MAX_PDF_PAGES} pages per PDF")
    return out


def _size(n: float) -> str:
    """``20 MiB``, ``20.5 MiB``, ``3.1 KiB``, ``100 bytes``."""
    for unit, scale in (("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(n)} bytes"


def _duration(seconds: float) -> str:
    """``61.5 minutes`` from a minute on, else ``2.5 s``."""
    if seconds >= 60:
        return f"{seconds / 60:.1f}".removesuffix(".0") + " minutes"
    return f"{seconds:.1f}".removesuffix(".0") + " s"


def _textless_warning(info: MediaInfo, model_id: str) -> str:
    pages = info.textless_pages
    which = "page" if len(pages) == 1 else "pages"
    return (
        f"{which} {_page_ranges(pages)} of {info.pages} {'has' if len(pages) == 1 else 'have'} no text layer "
        f"(scanned or drawn); {model_id} reads PDFs as text and gets nothing from {'it' if len(pages) == 1 else 'them'}"
    )


def _page_ranges(pages: Sequence[int], most: int = 10) -> str:
    """``1-3, 7, 9-12``: consecutive pages as ranges; past ``most`` ranges, how many more pages."""
    ranges: list[list[int]] = []
    for page in pages:
        if ranges and page == ranges[-1][1] + 1:
            ranges[-1][1] = page
        else:
            ranges.append([page, page])
    shown = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in ranges[:most])
    rest = sum(b - a + 1 for a, b in ranges[most:])
    return shown + (f" and {rest} more" if rest else "")


def _with_media(
    encoded: Encoded, media: ExampleMedia, modalities: Collection[str], max_length: int
) -> tuple[Encoded, Found]:
    """``encoded`` (text tokens, from the tokenizer) with its media's estimated tokens; a warning when text and
    media together are over ``max_length`` (tuning, with the processor's exact count, refuses such an example)."""
    tokens = media.estimated_tokens(modalities)
    over = tokens > 0 and encoded.full_length + tokens > max_length
    found: Found = []
    if over:
        found.append(
            (
                "contents",
                f"example is about {encoded.full_length + tokens} tokens with its media ({tokens} estimated for "
                f"{_media_summary(media)}), longer than maxLength {max_length}; media tokens cannot be cut, so "
                "tuning refuses it",
                "warning",
            )
        )
    with_media = EncodedWithMedia(
        encoded.input_ids, encoded.labels, encoded.full_length, media=media, media_tokens=tokens, over_budget=over
    )
    return with_media, found


def _media_summary(media: ExampleMedia) -> str:
    counts = []
    for modality, (one, many) in NOUNS.items():
        n = len(media.of(modality))
        if n:
            counts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(counts) or "its media"
