"""Stream a ``multipart/form-data`` upload to a file, counting and hashing it, never holding it in memory.

    upload = await receive_upload(request, directory, max_bytes=100 * 2**20, fields=("model", "maxLength"))

The one file part (``file``) goes to a temporary file in ``directory`` as it arrives; past ``max_bytes``
the read stops with 413 and the partial file is removed. Text fields are small (1 KiB) and named; a form has
at most 16 parts (413 past that; python-multipart bounds each part's headers).

    real = media_type(upload.path)          # "image/png" from the magic bytes, or None (a JSONL dataset)
    info = check_media(upload, real)        # header-only probe + per-file limits, else 400 naming the file

A media upload (image, audio, PDF) is typed by its bytes, never by its name or a declared type, and held to
the per-file limits of managed tuning: an image or a PDF at most 20 MiB (a PDF at most 300 pages), audio at
most 100 MiB and 60 minutes. Video is refused (no served model takes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from tunery.api.errors import invalid
from tunery.data.formats import modality_of
from tunery.data.media import Media, MediaError, MediaInfo, probe, sniff
from tunery.data.validation import (
    MAX_AUDIO_BYTES,
    MAX_AUDIO_SECONDS,
    MAX_IMAGE_BYTES,
    MAX_PDF_BYTES,
    MAX_PDF_PAGES,
)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 1024
MAX_PARTS = 16
MAX_FILENAME = 255
FILE_FIELD = "file"
MEDIA_BYTES = {"image": MAX_IMAGE_BYTES, "audio": MAX_AUDIO_BYTES, "pdf": MAX_PDF_BYTES}
"""Largest media upload per modality: the per-file limits a dataset's media parts are held to."""


@dataclass
class Upload:
    """An uploaded file on disk (``path``, to be renamed or removed by the caller) and the form's text fields."""

    path: Path
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    """Unknown, repeated or undecodable text fields: the caller reports them with its own checks."""

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


class _Form:
    """The ``python-multipart`` callbacks: headers per part, the file part's bytes, the text fields."""

    def __init__(self, fields: tuple[str, ...], max_bytes: int) -> None:
        self.allowed = fields
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.problems: list[tuple[str, str]] = []
        self.filename: str | None = None
        self.size = 0
        self.digest = hashlib.sha256()
        self.pending: list[bytes] = []  # file bytes parsed but not yet written
        self._header: tuple[bytes, bytes] = (b"", b"")
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self.parts = 0

    def callbacks(self) -> MultipartCallbacks:
        return cast(
            "MultipartCallbacks",
            {
                "on_part_begin": self.on_part_begin,
                "on_header_field": lambda data, start, end: self._grow_header(data[start:end], b""),
                "on_header_value": lambda data, start, end: self._grow_header(b"", data[start:end]),
                "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished,
                "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end,
            },
        )

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise HTTPException(413, f"too many form parts: the limit is {MAX_PARTS}")
        self._disposition, self._name, self._is_file, self._value = b"", None, False, bytearray()

    def _grow_header(self, name: bytes, value: bytes) -> None:
        self._header = (self._header[0] + name, self._header[1] + value)

    def on_header_end(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = (b"", b"")

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise ValueError("a part without a name")
        self._name = name.decode("utf-8", "replace")
        self._is_file = self._name == FILE_FIELD
        if self._is_file:
            if self.filename is not None:
                raise ValueError("more than one 'file' part")
            raw = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")
            printable = "".join(c for c in raw if c.isprintable())
            self.filename = Path(printable.replace("\\", "/")).name[:MAX_FILENAME] or "upload.jsonl"

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise HTTPException(413, f"file too large: the limit is {self.max_bytes} bytes")
            self.digest.update(chunk)
            self.pending.append(chunk)
        elif len(self._value) + len(chunk) > MAX_FIELD_BYTES:
            raise HTTPException(413, f"form field {self._name!r} too large: the limit is {MAX_FIELD_BYTES} bytes")
        else:
            self._value += chunk

    def on_part_end(self) -> None:
        if self._is_file or self._name is None:
            return
        if self._name not in self.allowed:
            self.problems.append((self._name, f"unknown form field; expected {', '.join((FILE_FIELD, *self.allowed))}"))
        elif self._name in self.fields:
            self.problems.append((self._name, "given twice"))
        else:
            try:
                self.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                self.problems.append((self._name, "not UTF-8 text"))


async def receive_upload(request: Request, directory: Path, *, max_bytes: int, fields: tuple[str, ...]) -> Upload:
    """Read the form, writing the ``file`` part under ``directory``; 400 lists every problem, 413 when too big."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise invalid([("request", "expected multipart/form-data with a 'file' part")], "upload")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".upload-{secrets.token_hex(8)}.part"
    form = _Form(fields, max_bytes)
    try:
        parser = MultipartParser(boundary, form.callbacks())
        with path.open("wb") as fh:
            async for chunk in request.stream():
                parser.write(chunk)
                await _flush(form, fh)
            parser.finalize()
            await _flush(form, fh)
    except (FormParserError, ValueError) as exc:
        _remove(path)
        raise invalid([("request", f"malformed multipart/form-data: {exc}")], "upload") from None
    except BaseException:
        _remove(path)
        raise
    if form.filename is None:
        _remove(path)
        raise invalid(
            [
                (FILE_FIELD, "required: the file to upload (a JSONL dataset, or an image, audio or PDF file)"),
                *form.problems,
            ],
            "upload",
        )
    return Upload(path, form.filename, form.size, form.digest.hexdigest(), form.fields, form.problems)


async def _flush(form: _Form, fh: IO[bytes]) -> None:
    if form.pending:
        data, form.pending = b"".join(form.pending), []
        await run_in_threadpool(fh.write, data)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def media_type(path: Path) -> str | None:
    """The media type the file's magic bytes say (image, audio, PDF, video), or None for anything else (a
    UTF-16 text's byte-order mark, FF FE, is not an MPEG audio frame: the dataset check names its encoding)."""
    with path.open("rb") as fh:
        head = fh.read(64)
    return None if head.startswith((b"\xff\xfe", b"\xfe\xff")) else sniff(head)


def check_media(upload: Upload, real: str) -> MediaInfo:
    """The upload's header facts (dimensions, seconds, pages); 400 naming ``file`` when it is unreadable,
    truncated, video, or over its modality's limit."""
    modality = modality_of(real)
    name = upload.filename
    if modality not in MEDIA_BYTES:
        raise invalid(
            [(FILE_FIELD, f"{name}: {real} uploads are not supported; upload an image, audio or PDF")], "upload"
        )
    most = MEDIA_BYTES[modality]
    if upload.size > most:
        raise invalid(
            [(FILE_FIELD, f"{name}: {upload.size} bytes; an upload of {modality} takes at most {most} bytes")], "upload"
        )
    try:
        info = probe(Media(real, path=upload.path, name=name))
    except MediaError as exc:
        raise invalid([(FILE_FIELD, str(exc))], "upload") from None
    if info.seconds > MAX_AUDIO_SECONDS:
        most_minutes = MAX_AUDIO_SECONDS // 60
        raise invalid(
            [(FILE_FIELD, f"{name}: {info.seconds / 60:.1f} minutes of audio; at most {most_minutes}")], "upload"
        )
    if info.pages > MAX_PDF_PAGES:
        raise invalid([(FILE_FIELD, f"{name}: {info.pages} pages; a PDF takes at most {MAX_PDF_PAGES}")], "upload")
    return info
