"""Document parts (``application/pdf``) expanded into what a model takes, for tuning and serving alike.

A text-only model reads a PDF as its extracted text, each page opened by a marker (``--- page 2 ---``), page
order kept; a page without a text layer keeps its marker with nothing under it (validation warns about it).
A vision-language model reads it as one image per rendered page, in page order, followed by the text layer
as a text part. Rendered pages are bounded: the longest side is at most ``MAX_PAGE_SIDE`` pixels.

    expand_pdf_for_text(part, source)  -> str           # the page-marked text
    expand_pdf_for_vlm(part, source)   -> list[Part]    # one image/png part per page, then the text part
    text_example(example, source)      -> Example       # every PDF part replaced by its text
    vlm_example(example, source)       -> Example       # every PDF part replaced by its page images + text

``source`` is a ``MediaSource`` or the dataset's folder (relative ``fileUri`` values resolve against it), or
None for inline data only. Part-level functions raise ``MediaError``; example-level ones raise
``DatasetError`` naming the line and the part (``line 4: contents[0].parts[1]: ...``).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from tunery.data.formats import Example, Part, Turn
from tunery.data.media import Media, MediaError, media_source, open_media, pdf_text
from tunery.errors import DatasetError

if TYPE_CHECKING:
    from PIL import Image

PDF = "application/pdf"
MAX_PAGE_SIDE = 1024  # pixels: the longest side of a rendered page
RENDER_DPI = 144  # the resolution a page is rendered at when that keeps it within MAX_PAGE_SIDE


def page_marker(number: int) -> str:
    """The line that opens page ``number`` (1-based) in a document's text."""
    return f"--- page {number} ---"


def is_pdf(part: Part) -> bool:
    return part.kind != "text" and part.modality == "pdf"


def has_documents(example: Example) -> bool:
    return any(is_pdf(p) for turn in example.turns for p in turn.parts)


def takes_pdf(modalities: Collection[str]) -> bool:
    """Whether a model of these modalities takes PDF parts: as text (text models) or as page images (VLMs)."""
    return "text" in modalities or "image" in modalities


def _media(part: Part, source: Any) -> Media:
    """The PDF's bytes, read once (text and pages are both read from them; no file is left open)."""
    if not is_pdf(part):
        raise MediaError(f"not a PDF part (mimeType {part.mime_type or 'text'!r})")
    media = open_media(part, media_source(source))
    return media if media.payload is not None else Media(media.mime_type, payload=media.read(), name=media.name)


def join_pages(pages: list[str]) -> str:
    """Page texts as one string, each page opened by its marker; an empty page keeps its marker."""
    return "\n\n".join(page_marker(n) + (f"\n{text}" if text else "") for n, text in enumerate(pages, 1))


def page_texts(part: Part, source: Any) -> list[str]:
    """The PDF's text layer, one string per page, in page order (``""`` for a page without text)."""
    return pdf_text(_media(part, source))


def empty_pages(part: Part, source: Any) -> list[int]:
    """1-based numbers of the pages whose text layer is empty (scans, images): what a text model cannot read."""
    return [n for n, text in enumerate(page_texts(part, source), 1) if not text]


def expand_pdf_for_text(part: Part, source: Any) -> str:
    """A PDF part as a text-only model reads it: every page's text under its marker, in page order."""
    return join_pages(page_texts(part, source))


def render_pages(media: Media, max_side: int = MAX_PAGE_SIDE, dpi: int = RENDER_DPI) -> list[Image.Image]:
    """Each page rendered to an RGB image at ``dpi``, scaled down where needed so that its longest side is at
    most ``max_side`` pixels; page order kept."""
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise MediaError(f"{media.name}: rendering PDF pages needs pypdfium2 (pip install pypdfium2)") from None
    try:
        doc = pdfium.PdfDocument(media.read())
    except Exception as exc:  # pdfium raises its own PdfiumError and others on a broken file
        raise MediaError(f"{media.name}: unreadable application/pdf ({exc})") from None
    images = []
    try:
        for index in range(len(doc)):
            page = doc[index]
            width, height = page.get_size()  # points (1/72 inch)
            scale = min(dpi / 72, max_side / max(width, height, 1.0))
            image = page.render(scale=scale).to_pil().convert("RGB")
            if max(image.size) > max_side:  # pdfium rounds a side up by a pixel at most
                image.thumbnail((max_side, max_side))
            images.append(image)
    except Exception as exc:
        raise MediaError(f"{media.name}: cannot render PDF page {len(images) + 1} ({exc})") from None
    finally:
        doc.close()
    return images


def page_images(part: Part, source: Any, max_side: int = MAX_PAGE_SIDE) -> list[Image.Image]:
    """The PDF part's pages as RGB images (longest side at most ``max_side``), in page order."""
    return render_pages(_media(part, source), max_side)


def _png_part(image: Image.Image) -> Part:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return Part("inlineData", mime_type="image/png", data=base64.b64encode(buffer.getvalue()).decode("ascii"))


def expand_pdf_for_vlm(part: Part, source: Any, max_side: int = MAX_PAGE_SIDE) -> list[Part]:
    """A PDF part as a vision-language model reads it: one ``image/png`` part per page in page order, then its
    text layer (page-marked, as for a text model) as a text part when any page has text."""
    media = _media(part, source)
    parts = [_png_part(image) for image in render_pages(media, max_side)]
    texts = pdf_text(media)
    if len(texts) != len(parts):
        raise MediaError(f"{media.name}: {len(parts)} pages rendered but {len(texts)} pages of text read")
    if any(texts):
        parts.append(Part("text", text=join_pages(texts)))
    return parts


def _replace_documents(example: Example, expand: Callable[[Part, bool, bool], list[Part]]) -> Example:
    """``example`` with each PDF part replaced by ``expand(part, has_part_before, has_part_after)``."""
    if not has_documents(example):
        return example
    turns = []
    for i, turn in enumerate(example.turns):
        parts: list[Part] = []
        for j, part in enumerate(turn.parts):
            if not is_pdf(part):
                parts.append(part)
                continue
            try:
                parts.extend(expand(part, j > 0, j + 1 < len(turn.parts)))
            except MediaError as exc:
                raise DatasetError(f"line {example.line}: contents[{i}].parts[{j}]: {exc}") from None
        turns.append(Turn(turn.role, tuple(parts)))
    return Example(turns=tuple(turns), system=example.system, line=example.line)


def text_example(example: Example, source: Any = None) -> Example:
    """``example`` with every PDF part replaced by its page-marked text (for a text-only model). ``Turn.text``
    joins text parts as they are, so the document is set apart from the parts around it by a blank line."""

    def expand(part: Part, before: bool, after: bool) -> list[Part]:
        text = expand_pdf_for_text(part, source)
        return [Part("text", text=("\n\n" if before else "") + text + ("\n\n" if after else ""))]

    return _replace_documents(example, expand)


def vlm_example(example: Example, source: Any = None, max_side: int = MAX_PAGE_SIDE) -> Example:
    """``example`` with every PDF part replaced by its page images and text layer (for a vision-language model)."""
    return _replace_documents(example, lambda part, before, after: expand_pdf_for_vlm(part, source, max_side))


__all__ = [
    "MAX_PAGE_SIDE",
    "PDF",
    "RENDER_DPI",
    "empty_pages",
    "expand_pdf_for_text",
    "expand_pdf_for_vlm",
    "has_documents",
    "is_pdf",
    "join_pages",
    "page_images",
    "page_marker",
    "page_texts",
    "render_pages",
    "takes_pdf",
    "text_example",
    "vlm_example",
]
