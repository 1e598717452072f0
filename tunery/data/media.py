"""Media parts (image, audio, PDF, video): where their bytes live, what they really are, and decoding.

Contract shared by validation, tuning, prediction and serving (filled in by the media work of #15):

- ``MediaSource``: how a ``Part`` of kind ``inlineData``/``fileData`` is resolved — the JSONL file's
  folder (embedded), ``TUNERY_DATA_ROOT`` (server), uploaded files (``files/{id}``), and whether
  ``http(s)://`` may be fetched (``--allow-remote-media``, off by default).
- ``open_media(part, source) -> Media``: the bytes (lazily, for a path) and the declared MIME type;
  raises ``MediaError`` with a message fit for ``FILE:LINE: field: message``.
- ``probe(media) -> MediaInfo``: the real type from the header (magic bytes), and its size: image
  width/height/frames, audio seconds, PDF pages — read from headers, not by decoding whole files.
- ``load_image(media) -> PIL.Image.Image`` (RGB; a GIF's first frame), ``load_audio(media, sampling_rate)
  -> numpy float32 mono``, ``pdf_text(media) -> list[str]`` (one string per page),
  ``pdf_images(media, dpi) -> list[PIL.Image.Image]`` (one image per page, page order kept).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import struct
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from tunery.data.formats import Part, modality_of

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

MAX_REMOTE_BYTES = 100 * 2**20
logging.getLogger("pypdf").addHandler(logging.NullHandler())  # a broken PDF is reported once, as a MediaError


class MediaError(ValueError):
    """A media part that cannot be used; the message names the problem (no path outside the roots).

    ``field`` is the part's key at fault when it is not the media itself: ``"mimeType"`` for a declared type
    that is unsupported or wrong; None for the bytes or where they are (``fileUri`` / ``data``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class MediaSource:
    """Where ``fileData`` URIs resolve: ``base`` (the JSONL file's folder), ``root`` (TUNERY_DATA_ROOT),
    ``resolve_file`` (``files/{id}`` → a path, or raise), and whether http(s) may be fetched."""

    base: Path | None = None
    root: Path | None = None
    resolve_file: Callable[[str], str | Path] | None = None
    allow_remote: bool = False
    max_remote_bytes: int = MAX_REMOTE_BYTES

    def roots(self) -> list[Path]:
        return [p.resolve() for p in (self.base, self.root) if p is not None]


def media_source(source: MediaSource | str | Path | None) -> MediaSource:
    """``source`` as a ``MediaSource``: given as one, or as the dataset's folder (a path), or None (inline only)."""
    if isinstance(source, MediaSource):
        return source
    return MediaSource(base=Path(source) if source is not None else None)


@dataclass
class Media:
    """A media part's bytes (read lazily from ``path``, or given) and its declared MIME type."""

    mime_type: str
    path: Path | None = None
    payload: bytes | None = None
    name: str = ""
    _head: bytes | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        if self.payload is not None:
            return len(self.payload)
        assert self.path is not None
        return self.path.stat().st_size

    def head(self, n: int = 64) -> bytes:
        if self.payload is not None:
            return self.payload[:n]
        if self._head is None or len(self._head) < n:
            with self._open() as fh:
                self._head = fh.read(max(n, 64))
        return self._head[:n]

    def read(self) -> bytes:
        if self.payload is not None:
            return self.payload
        with self._open() as fh:
            return fh.read()

    def stream(self) -> IO[bytes]:
        if self.payload is not None:
            return io.BytesIO(self.payload)
        return self._open()

    def _open(self) -> Any:
        assert self.path is not None
        try:
            return self.path.open("rb")
        except OSError as exc:
            raise MediaError(f"{self.name}: cannot be read ({exc.strerror})") from None


@dataclass(frozen=True)
class MediaInfo:
    """What the header says: the real MIME type, bytes, and per kind width/height/frames, seconds, pages."""

    mime_type: str
    modality: str
    size_bytes: int
    width: int = 0
    height: int = 0
    frames: int = 0
    seconds: float = 0.0
    pages: int = 0
    pages_without_text: int = 0
    textless_pages: tuple[int, ...] = ()
    """PDF pages (1-based) without a text layer: a text-only model sees nothing of them."""


def open_media(part: Part, source: MediaSource) -> Media:
    """The media of an ``inlineData``/``fileData`` part; MediaError when it cannot be found or reached."""
    if part.kind == "inlineData":
        try:
            payload = base64.b64decode("".join(part.data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("not valid base64") from None
        if not payload:
            raise MediaError("empty: no bytes after base64 decoding")
        return Media(part.mime_type, payload=payload, name="inline data")
    if part.kind != "fileData":
        raise MediaError("a text part has no media")
    uri = part.uri
    if uri.startswith("files/"):
        if source.resolve_file is None:
            raise MediaError(f"uploaded file ids are only known to the server (upload with POST /v1/files): {uri}")
        try:
            path = Path(source.resolve_file(uri.removeprefix("files/")))
        except MediaError:
            raise
        except Exception:
            raise MediaError(f"uploaded file not found (upload it with POST /v1/files): {uri}") from None
        if not path.is_file():
            raise MediaError(f"uploaded file not found: {uri}")
        return Media(part.mime_type, path=path, name=uri)
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        if not source.allow_remote:
            raise MediaError(f"remote media is not fetched unless allowed (--allow-remote-media): {uri}")
        return Media(part.mime_type, payload=_fetch(uri, source.max_remote_bytes), name=uri)
    if scheme and scheme != "file":
        raise MediaError(f"unsupported URI scheme {scheme!r}; use files/{{id}}, a path, file:// or http(s): {uri}")
    raw = unquote(urlsplit(uri).path) if scheme == "file" or uri.startswith("file:") else uri
    return Media(part.mime_type, path=_under_roots(raw, uri, source), name=uri)


def _under_roots(raw: str, uri: str, source: MediaSource) -> Path:
    """``raw`` as a file inside one of the roots (relative: resolved in each root in turn); a path with ``..``,
    or one that leaves the roots (itself or through a symbolic link), is refused, naming only the URI given."""
    roots = source.roots()
    if not roots:
        raise MediaError(f"no folder to resolve paths in (no dataset folder or TUNERY_DATA_ROOT): {uri}")
    if "\x00" in raw or not raw.strip():
        raise MediaError(f"not a path: {uri!r}")
    if ".." in PurePosixPath(raw).parts:
        raise MediaError(f"'..' is not allowed in a path: {uri}")
    inside = False  # some root holds the resolved path (only a missing file, then)
    for root in roots:
        candidate = Path(raw) if Path(raw).is_absolute() else root / raw
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if not resolved.is_relative_to(root):  # absolute elsewhere, or (no '..') through a symbolic link
            continue
        inside = True
        if resolved.is_file():
            return resolved
    if not inside:
        raise MediaError(f"outside the dataset folder and the data root: {uri}")
    raise MediaError(f"file not found: {uri}")


def _fetch(uri: str, limit: int) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(uri, timeout=30) as resp:  # noqa: S310 - scheme checked by the caller
            data = resp.read(limit + 1)
    except OSError as exc:
        raise MediaError(f"cannot be fetched ({exc}): {uri}") from None
    if len(data) > limit:
        raise MediaError(f"larger than {limit} bytes: {uri}")
    return data


def sniff(head: bytes) -> str | None:
    """The MIME type the magic bytes say, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    return None


_ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-flac": "audio/flac",
}
SUPPORTED = (
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "audio/wav",
    "audio/flac",
    "audio/mpeg",
    "audio/ogg",
    "application/pdf",
    "video/mp4",
)


def normalize_mime(mime_type: str) -> str:
    m = mime_type.strip().lower().split(";", 1)[0]
    return _ALIASES.get(m, m)


def probe(media: Media) -> MediaInfo:
    """The real type and size from the header; MediaError for unknown, mislabelled or truncated media.

    Nothing is decoded: an image's size is its header's, a PNG or JPEG is checked complete by its last bytes,
    a WAV's length is its header's (checked against the file's size), a PDF's pages are its page tree's."""
    declared = normalize_mime(media.mime_type)
    if declared not in SUPPORTED:
        raise MediaError(f"unsupported MIME type {media.mime_type!r}; supported: {', '.join(SUPPORTED)}", "mimeType")
    real = sniff(media.head(64))
    if real is None:
        raise MediaError(f"the bytes are not a known media type (declared {media.mime_type}): {media.name}")
    if real != declared:
        raise MediaError(f"declared {media.mime_type} but the bytes are {real}: {media.name}", "mimeType")
    size = media.size
    modality = modality_of(real)
    if modality == "image":
        return _probe_image(media, real, size)
    if modality == "audio":
        return MediaInfo(real, "audio", size, seconds=_audio_seconds(media, real))
    if modality == "pdf":
        pages, textless = _pdf_pages(media)
        return MediaInfo(real, "pdf", size, pages=pages, pages_without_text=len(textless), textless_pages=textless)
    return MediaInfo(real, "video", size)


def _probe_image(media: Media, real: str, size: int) -> MediaInfo:
    from PIL import Image, UnidentifiedImageError

    try:
        with media.stream() as fh, Image.open(fh) as img:
            width, height = img.size
            frames = int(getattr(img, "n_frames", 1)) if real == "image/gif" else 1
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning, where warnings are errors
        raise MediaError(f"image too large: more than {Image.MAX_IMAGE_PIXELS} pixels: {media.name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError) as exc:
        raise MediaError(f"unreadable {real} ({exc}): {media.name}") from None
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise MediaError(
            f"image too large: {width} x {height} pixels, more than {Image.MAX_IMAGE_PIXELS}: {media.name}"
        )
    if real == "image/png" and b"IEND" not in _tail(media, 16):
        raise MediaError(f"truncated image/png (no IEND chunk at the end): {media.name}")
    if real == "image/jpeg" and b"\xff\xd9" not in _tail(media, JPEG_TAIL):
        raise MediaError(f"truncated image/jpeg (no end-of-image marker): {media.name}")
    return MediaInfo(real, "image", size, width=width, height=height, frames=frames)


JPEG_TAIL = 1024
"""A JPEG's end-of-image marker is looked for in its last bytes: some writers pad or append a little after it."""


def _tail(media: Media, n: int = 32) -> bytes:
    if media.payload is not None:
        return media.payload[-n:]
    with media.stream() as fh:
        fh.seek(max(0, media.size - n))
        return fh.read()


def _audio_seconds(media: Media, real: str) -> float:
    if real == "audio/wav":
        seconds = _wav_seconds(media)
        if seconds is not None:
            return seconds
    try:
        import soundfile
    except ImportError:
        raise MediaError(f"{real} needs soundfile (pip install soundfile): {media.name}") from None
    try:
        with media.stream() as fh:
            meta = soundfile.info(fh)
    except (RuntimeError, OSError, soundfile.LibsndfileError) as exc:
        raise MediaError(f"unreadable {real} ({exc}): {media.name}") from None
    return float(meta.duration)


def _wav_seconds(media: Media) -> float | None:
    """A PCM WAV's length from its header, refused when the file holds fewer frames than the header says; None
    for a WAV the stdlib cannot read (float or extensible format: soundfile reads it)."""
    try:
        with media.stream() as fh, wave.open(fh) as w:
            rate, frames, frame_bytes = w.getframerate(), w.getnframes(), w.getnchannels() * w.getsampwidth()
            data_start = fh.tell()  # wave stops at the start of the data chunk
    except wave.Error:
        return None
    except (EOFError, OSError, struct.error, RuntimeError) as exc:  # wave raises a bare RuntimeError on a cut chunk
        raise MediaError(f"unreadable audio/wav ({exc or 'the header is cut short'}): {media.name}") from None
    held = (media.size - data_start) // frame_bytes if frame_bytes else 0
    if not rate:
        raise MediaError(f"unreadable audio/wav (a sampling rate of 0): {media.name}")
    if held < frames:
        raise MediaError(
            f"truncated audio/wav: the header says {frames / rate:.2f} s, the file holds {held / rate:.2f} s: "
            f"{media.name}"
        )
    return frames / rate


@contextlib.contextmanager
def _pdf_reader(media: Media) -> Iterator[Any]:
    """A pypdf reader on the media (the file closed after), its errors as MediaError."""
    try:
        from pypdf import PdfReader
    except ImportError:
        raise MediaError(f"PDF parts need pypdf (pip install pypdf): {media.name}") from None
    with media.stream() as fh:
        try:
            yield PdfReader(fh)
        except MediaError:
            raise
        except Exception as exc:  # pypdf raises many kinds on a broken file
            raise MediaError(f"unreadable application/pdf ({exc}): {media.name}") from None


def _pdf_pages(media: Media) -> tuple[int, tuple[int, ...]]:
    """The page count and the pages (1-based, of the first MAX_TEXT_CHECKED_PAGES) that have no text layer: no
    font in their resources. Reads the page tree, not the pages' content."""
    with _pdf_reader(media) as reader:
        pages = len(reader.pages)
        textless = []
        for number, page in enumerate(reader.pages[:MAX_TEXT_CHECKED_PAGES], start=1):
            resources: Any = page.get("/Resources")
            resources = resources.get_object() if resources is not None else None
            fonts: Any = resources.get("/Font") if hasattr(resources, "get") else None
            if fonts is None or not fonts.get_object():
                textless.append(number)
    return pages, tuple(textless)


MAX_TEXT_CHECKED_PAGES = 1000
"""Pages whose text layer is looked for (past a document limit's 300 pages, the count alone matters)."""


def load_image(media: Media) -> Image.Image:
    """The image, decoded, as RGB (a GIF's first frame)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with media.stream() as fh, Image.open(fh) as img:
            img.seek(0)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise MediaError(f"cannot decode image ({exc}): {media.name}") from None
    except Image.DecompressionBombError as exc:
        raise MediaError(f"cannot decode image ({exc}): {media.name}") from None


def load_audio(media: Media, sampling_rate: int) -> np.ndarray:
    """The audio as float32 mono at ``sampling_rate`` (linear resampling). PCM WAV through the stdlib; other
    WAVs (float, 24-bit, extensible) and FLAC/MP3/OGG through soundfile."""
    import numpy as np

    real = sniff(media.head(64))
    decoded = _wav_pcm(media) if real == "audio/wav" else None
    if decoded is None:
        try:
            import soundfile
        except ImportError:
            raise MediaError(f"{real} needs soundfile (pip install soundfile): {media.name}") from None
        try:
            with media.stream() as fh:
                arr, rate = soundfile.read(fh, dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as exc:
            raise MediaError(f"cannot decode {real} ({exc}): {media.name}") from None
        data = arr.mean(axis=1)
    else:
        data, rate = decoded
    if rate != sampling_rate and len(data):
        n = max(1, round(len(data) * sampling_rate / rate))
        data = np.interp(np.linspace(0, len(data) - 1, n), np.arange(len(data)), data)
    return np.asarray(data, dtype=np.float32)


def _wav_pcm(media: Media) -> tuple[np.ndarray, int] | None:
    """8/16/32-bit PCM WAV decoded by the stdlib, mono; None for a WAV it does not read (soundfile does)."""
    import numpy as np

    try:
        with media.stream() as fh, wave.open(fh) as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except wave.Error:
        return None
    except (EOFError, OSError, struct.error, RuntimeError) as exc:  # wave raises a bare RuntimeError on a cut chunk
        raise MediaError(f"cannot decode audio/wav ({exc}): {media.name}") from None
    if width not in (1, 2, 4) or not channels:
        return None
    dtype = {1: "u1", 2: "<i2", 4: "<i4"}[width]
    samples = np.frombuffer(raw, dtype).astype(np.float32)
    data = (samples - 128) / 128 if width == 1 else samples / float(2 ** (8 * width - 1))
    usable = len(data) - len(data) % channels
    return data[:usable].reshape(-1, channels).mean(axis=1), rate


def pdf_text(media: Media) -> list[str]:
    """The text layer, one string per page, in page order ("" for a page without text)."""
    with _pdf_reader(media) as reader:
        try:
            return [(page.extract_text() or "").strip() for page in reader.pages]
        except Exception as exc:
            raise MediaError(f"cannot extract PDF text ({exc}): {media.name}") from None


def pdf_images(media: Media, dpi: int = 96) -> list[Image.Image]:
    """Each page rendered to an RGB image at ``dpi``, in page order."""
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise MediaError(f"rendering PDF pages needs pypdfium2 (pip install pypdfium2): {media.name}") from None
    try:
        doc = pdfium.PdfDocument(media.read())
    except Exception as exc:
        raise MediaError(f"unreadable application/pdf ({exc}): {media.name}") from None
    try:
        return [doc[i].render(scale=dpi / 72).to_pil().convert("RGB") for i in range(len(doc))]
    finally:
        doc.close()


def file_resolver(store: Any, tenant: str) -> Callable[[str], str]:
    """``files/{id}`` → the uploaded file's path, for ``MediaSource.resolve_file`` on the server."""

    def resolve(file_id: str) -> str:
        return str(store.get_file(tenant, file_id).path)

    return resolve


__all__ = [
    "Media",
    "MediaError",
    "MediaInfo",
    "MediaSource",
    "file_resolver",
    "load_audio",
    "load_image",
    "normalize_mime",
    "open_media",
    "pdf_images",
    "pdf_text",
    "probe",
    "sniff",
]
