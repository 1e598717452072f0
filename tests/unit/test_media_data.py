"""``tunery.data.media``: where a media part's bytes come from, what they really are, and their size from headers.

Every file is generated here and small (PIL images, stdlib/soundfile audio, PDFs written by hand or by pypdf).

.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_media_data.py
"""

from __future__ import annotations

import base64
import io
import os
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tunery.data.formats import Part
from tunery.data.media import (
    MediaError,
    MediaSource,
    load_audio,
    load_image,
    open_media,
    pdf_text,
    probe,
    sniff,
)


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (12, 7), colour: tuple[int, int, int] = (200, 30, 40)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def wav_bytes(seconds: float, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    frames = int(seconds * rate)
    tone = (np.sin(np.arange(frames) * 2 * np.pi * 440 / rate) * 0.5 * 32767).astype("<i2")
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.repeat(tone, channels).tobytes())
    return buf.getvalue()


def pdf_bytes(pages: list[str | None]) -> bytes:
    """A PDF written by hand: one page per item, with that text drawn in Helvetica, or (None) no text layer."""
    objects: list[bytes] = [b"", b""]  # 1: catalog, 2: page tree, filled in last
    kids = []
    font = len(objects) + 1
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for text in pages:
        if text is None:
            stream, resources = b"0 0 1 rg 10 10 50 50 re f", b"<< >>"
        else:
            stream, resources = (
                b"BT /F1 12 Tf 20 100 Td (" + text.encode() + b") Tj ET",
                b"<< /Font << /F1 %d 0 R >> >>" % font,
            )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents %d 0 R /Resources %s >>"
            % (content, resources)
        )
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def inline(mime: str, payload: bytes) -> Part:
    return Part("inlineData", mime_type=mime, data=base64.b64encode(payload).decode())


def by_uri(mime: str, uri: str) -> Part:
    return Part("fileData", mime_type=mime, uri=uri)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A dataset folder with ``img/cat.png`` in it, and a secret file beside (outside) the folder."""
    folder = tmp_path / "dataset"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "cat.png").write_bytes(image_bytes(size=(30, 20)))
    (tmp_path / "secret.png").write_bytes(image_bytes(size=(5, 5)))
    return folder


# Where the bytes come from ----------------------------------------------------------------------------------------


def test_inline_base64_is_decoded_and_probed() -> None:
    png = image_bytes(size=(12, 7))
    media = open_media(inline("image/png", png), MediaSource())
    assert media.read() == png and media.size == len(png)
    info = probe(media)
    assert (info.mime_type, info.modality, info.width, info.height, info.size_bytes) == (
        "image/png",
        "image",
        12,
        7,
        len(png),
    )
    wrapped = base64.encodebytes(png).decode()  # MIME-style base64 with line breaks
    assert (
        "\n" in wrapped
        and open_media(Part("inlineData", mime_type="image/png", data=wrapped), MediaSource()).read() == png
    )
    assert load_image(media).getpixel((0, 0)) == (200, 30, 40)


@pytest.mark.parametrize(("data", "message"), [("not base64!", "not valid base64"), ("====", "")])
def test_bad_base64_is_refused(data: str, message: str) -> None:
    with pytest.raises(MediaError, match=message or "base64|empty"):
        open_media(Part("inlineData", mime_type="image/png", data=data), MediaSource())


def test_a_relative_path_resolves_in_the_dataset_folder(dataset: Path) -> None:
    source = MediaSource(base=dataset)
    media = open_media(by_uri("image/png", "img/cat.png"), source)
    assert media.path == (dataset / "img" / "cat.png").resolve()
    assert (probe(media).width, probe(media).height) == (30, 20)
    inside = open_media(by_uri("image/png", (dataset / "img" / "cat.png").resolve().as_uri()), source)
    assert inside.path == media.path  # file:// inside the folder
    root = MediaSource(root=dataset.parent)  # or under TUNERY_DATA_ROOT
    assert open_media(by_uri("image/png", "dataset/img/cat.png"), root).path == media.path


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("img/dog.png", "file not found: img/dog.png"),
        ("../secret.png", "'..' is not allowed in a path: ../secret.png"),
        ("img/../../secret.png", "'..' is not allowed"),
        ("SECRET", "outside the dataset folder and the data root: "),  # the absolute path, filled in below
        ("FILE_URI", "outside the dataset folder and the data root: file://"),
        ("http://example.com/cat.png", "remote media is not fetched unless allowed (--allow-remote-media)"),
        ("https://example.com/cat.png", "remote media is not fetched unless allowed"),
        ("ftp://example.com/cat.png", "unsupported URI scheme 'ftp'"),
        ("files/abc123", "uploaded file ids are only known to the server"),
    ],
)
def test_paths_are_confined_and_remote_media_is_refused(dataset: Path, uri: str, message: str) -> None:
    secret = (dataset.parent / "secret.png").resolve()
    uri = {"SECRET": str(secret), "FILE_URI": secret.as_uri()}.get(uri, uri)
    with pytest.raises(MediaError) as caught:
        open_media(by_uri("image/png", uri), MediaSource(base=dataset))
    assert message in str(caught.value) and str(caught.value).endswith(uri)  # the URI as given, nothing resolved


def test_a_symbolic_link_out_of_the_folder_is_refused(dataset: Path) -> None:
    os.symlink(dataset.parent / "secret.png", dataset / "img" / "leak.png")
    os.symlink(dataset.parent, dataset / "up")
    os.symlink(dataset / "img" / "cat.png", dataset / "alias.png")  # a link that stays inside is fine
    source = MediaSource(base=dataset)
    for uri in ("img/leak.png", "up/secret.png"):
        with pytest.raises(MediaError, match=f"outside the dataset folder and the data root: {uri}$"):
            open_media(by_uri("image/png", uri), source)
    cat = (dataset / "img" / "cat.png").resolve()
    assert open_media(by_uri("image/png", "alias.png"), source).path == cat
    assert open_media(by_uri("image/png", "up/dataset/img/cat.png"), source).path == cat  # out and back in


def test_no_folder_means_inline_only() -> None:
    with pytest.raises(MediaError, match="no folder to resolve paths in"):
        open_media(by_uri("image/png", "img/cat.png"), MediaSource())


def test_uploaded_file_ids_resolve_through_the_server(tmp_path: Path) -> None:
    stored = tmp_path / "f1.png"
    stored.write_bytes(image_bytes())
    known = {"f1": stored}

    def resolve(file_id: str) -> Path:
        return known[file_id]

    source = MediaSource(resolve_file=resolve)
    assert open_media(by_uri("image/png", "files/f1"), source).path == stored
    with pytest.raises(MediaError, match="uploaded file not found .*: files/f2"):
        open_media(by_uri("image/png", "files/f2"), source)


# What the bytes are ----------------------------------------------------------------------------------------------


def test_magic_bytes_name_the_real_type(tmp_path: Path) -> None:
    import soundfile

    flac = io.BytesIO()
    soundfile.write(flac, np.zeros(800, dtype="float32"), 8000, format="FLAC")
    samples = {
        "image/png": image_bytes("PNG"),
        "image/jpeg": image_bytes("JPEG"),
        "image/webp": image_bytes("WEBP"),
        "image/gif": image_bytes("GIF"),
        "audio/wav": wav_bytes(0.1),
        "audio/flac": flac.getvalue(),
        "audio/mpeg": b"ID3\x04\x00" + bytes(60),
        "audio/ogg": b"OggS\x00\x02" + bytes(60),
        "application/pdf": pdf_bytes(["hi"]),
        "video/mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(60),
    }
    assert {mime: sniff(data[:64]) for mime, data in samples.items()} == {mime: mime for mime in samples}
    assert sniff(b"hello world, plain text") is None


def test_a_jpeg_labelled_png_is_refused_naming_both_types() -> None:
    media = open_media(inline("image/png", image_bytes("JPEG")), MediaSource())
    with pytest.raises(MediaError, match=r"declared image/png but the bytes are image/jpeg") as caught:
        probe(media)
    assert caught.value.field == "mimeType"
    assert probe(open_media(inline("image/jpg", image_bytes("JPEG")), MediaSource())).mime_type == "image/jpeg"


def test_unknown_and_unsupported_types_are_refused() -> None:
    with pytest.raises(MediaError, match="unsupported MIME type 'image/tiff'") as caught:
        probe(open_media(inline("image/tiff", image_bytes()), MediaSource()))
    assert caught.value.field == "mimeType"
    with pytest.raises(MediaError, match=r"the bytes are not a known media type \(declared image/png\)"):
        probe(open_media(inline("image/png", b"just some text, not an image"), MediaSource()))


def test_truncated_images_are_refused(dataset: Path) -> None:
    png, jpeg = image_bytes("PNG", (40, 40)), image_bytes("JPEG", (40, 40))
    (dataset / "cut.png").write_bytes(png[: len(png) - 20])
    (dataset / "cut.jpg").write_bytes(jpeg[: len(jpeg) - 40])
    (dataset / "sig.png").write_bytes(png[:8])  # the signature and nothing else
    source = MediaSource(base=dataset)
    with pytest.raises(MediaError, match=r"truncated image/png \(no IEND chunk at the end\): cut.png"):
        probe(open_media(by_uri("image/png", "cut.png"), source))
    with pytest.raises(MediaError, match=r"truncated image/jpeg \(no end-of-image marker\): cut.jpg"):
        probe(open_media(by_uri("image/jpeg", "cut.jpg"), source))
    with pytest.raises(MediaError, match=r"unreadable image/png .*: sig.png"):
        probe(open_media(by_uri("image/png", "sig.png"), source))


def test_probe_reads_the_header_and_never_decodes(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = image_bytes("PNG", (1500, 1000))
    (dataset / "big.png").write_bytes(big)
    gif = io.BytesIO()
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("probe decoded the image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    info = probe(open_media(by_uri("image/png", "big.png"), MediaSource(base=dataset)))
    assert (info.width, info.height, info.frames, info.size_bytes) == (1500, 1000, 1, len(big))
    monkeypatch.undo()
    assert probe(open_media(inline("image/gif", gif.getvalue()), MediaSource())).frames == 3
    assert load_image(open_media(inline("image/gif", gif.getvalue()), MediaSource())).getpixel((0, 0)) == (255, 0, 0)


# Audio -----------------------------------------------------------------------------------------------------------


def test_wav_seconds_come_from_the_header() -> None:
    for seconds, rate, channels in ((0.5, 16000, 1), (1.25, 8000, 2)):
        info = probe(open_media(inline("audio/wav", wav_bytes(seconds, rate, channels)), MediaSource()))
        assert (info.modality, info.seconds) == ("audio", pytest.approx(seconds))
    cut = wav_bytes(1.0)
    with pytest.raises(MediaError, match=r"truncated audio/wav: the header says 1.00 s, the file holds 0.50 s"):
        probe(open_media(inline("audio/wav", cut[: 44 + 16000]), MediaSource()))
    with pytest.raises(MediaError, match="unreadable audio/wav"):
        probe(open_media(inline("audio/wav", cut[:20]), MediaSource()))


def test_other_audio_goes_through_soundfile() -> None:
    import soundfile

    for fmt, subtype, mime in (("FLAC", "PCM_16", "audio/flac"), ("WAV", "FLOAT", "audio/wav")):
        buf = io.BytesIO()
        soundfile.write(buf, np.full(12000, 0.25, dtype="float32"), 8000, format=fmt, subtype=subtype)
        media = open_media(inline(mime, buf.getvalue()), MediaSource())
        assert probe(media).seconds == pytest.approx(1.5)
        samples = load_audio(media, 16000)  # resampled to the extractor's rate
        assert samples.dtype == np.float32 and len(samples) == 24000
        assert float(samples.mean()) == pytest.approx(0.25, abs=1e-3)


def test_pcm_wav_decodes_to_mono_at_the_asked_rate() -> None:
    samples = load_audio(open_media(inline("audio/wav", wav_bytes(0.5, 8000, channels=2)), MediaSource()), 16000)
    assert samples.shape == (8000,) and samples.dtype == np.float32
    assert 0.45 < float(np.abs(samples).max()) <= 0.5


# PDF -------------------------------------------------------------------------------------------------------------


def test_pdf_pages_and_text_layer() -> None:
    media = open_media(inline("application/pdf", pdf_bytes(["Invoice 42", None, "Total 7 EUR"])), MediaSource())
    info = probe(media)
    assert (info.modality, info.pages, info.textless_pages, info.pages_without_text) == ("pdf", 3, (2,), 1)
    assert pdf_text(media) == ["Invoice 42", "", "Total 7 EUR"]


def test_pdf_page_count_of_a_long_document(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(301):
        writer.add_blank_page(width=72, height=72)
    buf = io.BytesIO()
    writer.write(buf)
    info = probe(open_media(inline("application/pdf", buf.getvalue()), MediaSource()))
    assert info.pages == 301 and info.pages_without_text == 301


def test_a_broken_pdf_is_refused() -> None:
    with pytest.raises(MediaError, match="unreadable application/pdf"):
        probe(open_media(inline("application/pdf", b"%PDF-1.4\n" + bytes(100)), MediaSource()))


def test_corrupted_media_is_always_a_media_error() -> None:
    """Bytes flipped, cut or inserted in every kind: probe raises MediaError (a message), never a library's own."""
    import random

    import soundfile

    flac = io.BytesIO()
    soundfile.write(flac, np.zeros(800, dtype="float32"), 8000, format="FLAC")
    samples = {
        "image/png": image_bytes("PNG"),
        "image/jpeg": image_bytes("JPEG"),
        "image/gif": image_bytes("GIF"),
        "image/webp": image_bytes("WEBP"),
        "audio/wav": wav_bytes(0.1),
        "audio/flac": flac.getvalue(),
        "application/pdf": pdf_bytes(["hi", None]),
    }
    rng = random.Random(7)
    refused = 0
    for _ in range(3000):
        mime, data = rng.choice(sorted(samples.items()))
        corrupt = bytearray(data)
        cut = rng.randrange(8, len(corrupt))
        match rng.randrange(3):
            case 0:
                for i in rng.sample(range(8, len(corrupt)), 4):
                    corrupt[i] = rng.randrange(256)
            case 1:
                del corrupt[cut:]
            case _:
                corrupt[cut:cut] = rng.randbytes(rng.randint(1, 40))
        try:
            probe(open_media(inline(mime, bytes(corrupt)), MediaSource()))
        except MediaError:
            refused += 1
    assert refused > 1000  # most corruptions are caught; the rest still read as what they claim


def test_an_image_too_large_to_decode_is_refused_from_its_header() -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # 400 megapixels, RGB, declared only
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(MediaError, match=r"image too large"):
        probe(open_media(inline("image/png", png), MediaSource()))
