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
import io
import struct
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from tunery.data.formats import Part, modality_of

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

MAX_REMOTE_BYTES = 100 * 2**20


class MediaError(ValueError):
    """A media part that cannot be used; the message names the problem (no path outside the roots)."""


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


def open_media(part: Part, source: MediaSource) -> Media:
    """The media of an ``inlineData``/``fileData`` part; MediaError when it cannot be found or reached."""
    if part.kind == "inlineData":
        try:
            payload = base64.b64decode(part.data, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("inlineData.data is not valid base64") from None
        if not payload:
            raise MediaError("inlineData.data is empty")
        return Media(part.mime_type, payload=payload, name="inline data")
    if part.kind != "fileData":
        raise MediaError("a text part has no media")
    uri = part.uri
    if uri.startswith("files/"):
        if source.resolve_file is None:
            raise MediaError(f"{uri!r}: uploaded file ids are only known to the server (upload with POST /v1/files)")
        try:
            path = Path(source.resolve_file(uri.removeprefix("files/")))
        except MediaError:
            raise
        except Exception:
            raise MediaError(f"{uri!r} not found (upload it with POST /v1/files)") from None
        if not path.is_file():
            raise MediaError(f"{uri!r} not found")
        return Media(part.mime_type, path=path, name=uri)
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        if not source.allow_remote:
            raise MediaError(f"{uri!r}: remote media is not fetched unless allowed (--allow-remote-media)")
        return Media(part.mime_type, payload=_fetch(uri, source.max_remote_bytes), name=uri)
    if scheme and scheme != "file":
        raise MediaError(f"{uri!r}: unsupported URI scheme {scheme!r}; use files/{{id}}, a path, file:// or http(s)")
    raw = unquote(urlsplit(uri).path) if scheme == "file" or uri.startswith("file:") else uri
    return Media(part.mime_type, path=_under_roots(raw, uri, source), name=uri)


def _under_roots(raw: str, uri: str, source: MediaSource) -> Path:
    roots = source.roots()
    if not roots:
        raise MediaError(f"{uri!r}: no folder to resolve paths in (no dataset folder or TUNERY_DATA_ROOT)")
    if "\x00" in raw or not raw.strip():
        raise MediaError(f"{uri!r} is not a path")
    if ".." in PurePosixPath(raw).parts:
        raise MediaError(f"{uri!r}: '..' is not allowed")
    for root in roots:
        candidate = Path(raw) if Path(raw).is_absolute() else root / raw
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if not resolved.is_relative_to(root):
            continue
        if resolved.is_file():
            return resolved
    if Path(raw).is_absolute() and not any(Path(raw).resolve().is_relative_to(r) for r in roots):
        raise MediaError(f"{uri!r} is outside the dataset folder and the data root")
    raise MediaError(f"{uri!r}: file not found")


def _fetch(uri: str, limit: int) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(uri, timeout=30) as resp:  # noqa: S310 - scheme checked by the caller
            data = resp.read(limit + 1)
    except OSError as exc:
        raise MediaError(f"{uri!r}: cannot be fetched ({exc})") from None
    if len(data) > limit:
        raise MediaError(f"{uri!r}: larger than {limit} bytes")
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
    """The real type and size from the header; MediaError for unknown, mislabelled or truncated media."""
    declared = normalize_mime(media.mime_type)
    if declared not in SUPPORTED:
        raise MediaError(f"unsupported MIME type {media.mime_type!r}; supported: {', '.join(SUPPORTED)}")
    head = media.head(64)
    real = sniff(head)
    if real is None:
        raise MediaError(f"{media.name}: the bytes are not a known media type (declared {media.mime_type})")
    if real != declared:
        raise MediaError(f"{media.name}: declared {media.mime_type} but the bytes are {real}")
    size = media.size
    modality = modality_of(real)
    if modality == "image":
        return _probe_image(media, real, size)
    if modality == "audio":
        return MediaInfo(real, "audio", size, seconds=_audio_seconds(media, real))
    if modality == "pdf":
        pages, no_text = _pdf_pages(media)
        return MediaInfo(real, "pdf", size, pages=pages, pages_without_text=no_text)
    return MediaInfo(real, "video", size)


def _probe_image(media: Media, real: str, size: int) -> MediaInfo:
    from PIL import Image, UnidentifiedImageError

    try:
        with media.stream() as fh, Image.open(fh) as img:
            width, height = img.size
            frames = int(getattr(img, "n_frames", 1)) if real == "image/gif" else 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        raise MediaError(f"{media.name}: unreadable {real} ({exc})") from None
    if real == "image/png":
        _png_complete(media)
    if real == "image/jpeg" and not _tail(media).rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise MediaError(f"{media.name}: truncated image/jpeg (no end-of-image marker)")
    return MediaInfo(real, "image", size, width=width, height=height, frames=frames)


def _tail(media: Media, n: int = 32) -> bytes:
    if media.payload is not None:
        return media.payload[-n:]
    with media.stream() as fh:
        fh.seek(max(0, media.size - n))
        return fh.read()


def _png_complete(media: Media) -> None:
    """A PNG ends with its IEND chunk; checked from the file's tail (cheap, no decoding)."""
    if b"IEND" not in _tail(media, 16):
        raise MediaError(f"{media.name}: truncated image/png (no IEND chunk)")


def _audio_seconds(media: Media, real: str) -> float:
    if real == "audio/wav":
        try:
            with media.stream() as fh, wave.open(fh) as w:
                rate, frames = w.getframerate(), w.getnframes()
        except (wave.Error, EOFError, OSError) as exc:
            raise MediaError(f"{media.name}: unreadable audio/wav ({exc})") from None
        return frames / rate if rate else 0.0
    try:
        import soundfile
    except ImportError:
        raise MediaError(f"{media.name}: {real} needs soundfile (pip install soundfile)") from None
    try:
        with media.stream() as fh:
            meta = soundfile.info(fh)
    except (RuntimeError, OSError, soundfile.LibsndfileError) as exc:
        raise MediaError(f"{media.name}: unreadable {real} ({exc})") from None
    return float(meta.duration)


def _pdf_reader(media: Media) -> Any:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        raise MediaError(f"{media.name}: PDF parts need pypdf (pip install pypdf)") from None
    try:
        return PdfReader(media.stream())
    except (PyPdfError, OSError, ValueError, KeyError, struct.error) as exc:
        raise MediaError(f"{media.name}: unreadable application/pdf ({exc})") from None


def _pdf_pages(media: Media) -> tuple[int, int]:
    reader = _pdf_reader(media)
    try:
        pages = len(reader.pages)
    except Exception as exc:  # pypdf raises many kinds on a broken file
        raise MediaError(f"{media.name}: unreadable application/pdf ({exc})") from None
    no_text = 0
    for page in reader.pages[:300]:
        try:
            fonts = page.get("/Resources", {}).get("/Font")
        except Exception:
            fonts = None
        if not fonts:
            no_text += 1
    return pages, no_text


def load_image(media: Media) -> Image.Image:
    """The image, decoded, as RGB (a GIF's first frame)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with media.stream() as fh, Image.open(fh) as img:
            img.seek(0)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"{media.name}: cannot decode image ({exc})") from None


def load_audio(media: Media, sampling_rate: int) -> np.ndarray:
    """The audio as float32 mono at ``sampling_rate`` (linear resampling)."""
    import numpy as np

    real = sniff(media.head(64))
    if real == "audio/wav":
        try:
            with media.stream() as fh, wave.open(fh) as w:
                rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
                raw = w.readframes(w.getnframes())
        except (wave.Error, EOFError, OSError) as exc:
            raise MediaError(f"{media.name}: cannot decode audio/wav ({exc})") from None
        if width == 1:
            data = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
        elif width == 2:
            data = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
        elif width == 4:
            data = np.frombuffer(raw, "<i4").astype(np.float32) / 2**31
        else:
            raise MediaError(f"{media.name}: {8 * width}-bit wav is not supported")
        data = data.reshape(-1, channels).mean(axis=1)
    else:
        try:
            import soundfile

            with media.stream() as fh:
                arr, rate = soundfile.read(fh, dtype="float32", always_2d=True)
        except ImportError:
            raise MediaError(f"{media.name}: {real} needs soundfile (pip install soundfile)") from None
        except (RuntimeError, OSError) as exc:
            raise MediaError(f"{media.name}: cannot decode {real} ({exc})") from None
        data = arr.mean(axis=1)
    if rate != sampling_rate and len(data):
        n = max(1, round(len(data) * sampling_rate / rate))
        data = np.interp(np.linspace(0, len(data) - 1, n), np.arange(len(data)), data)
    return np.asarray(data, dtype=np.float32)


def pdf_text(media: Media) -> list[str]:
    """The text layer, one string per page, in page order ("" for a page without text)."""
    reader = _pdf_reader(media)
    try:
        return [(page.extract_text() or "").strip() for page in reader.pages]
    except Exception as exc:
        raise MediaError(f"{media.name}: cannot extract PDF text ({exc})") from None


def pdf_images(media: Media, dpi: int = 96) -> list[Image.Image]:
    """Each page rendered to an RGB image at ``dpi``, in page order."""
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise MediaError(f"{media.name}: rendering PDF pages needs pypdfium2 (pip install pypdfium2)") from None
    try:
        doc = pdfium.PdfDocument(media.read())
    except Exception as exc:
        raise MediaError(f"{media.name}: unreadable application/pdf ({exc})") from None
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
