"""Media parts in dataset validation (#15): the bad-media corpus gives line-numbered errors naming the field, in
``read_examples`` and through ``tunery datasets validate`` (exit 1, no traceback); per-example limits; a PDF
without a text layer warns a text-only model; statistics count the media and estimate its tokens.

.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_media_validation.py
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
import test_media_data as files  # the generated media of the media.py tests (same folder)
from typer.testing import CliRunner

from tunery.cli import app
from tunery.data.media import MediaSource
from tunery.data.stats import AUDIO_TOKENS_PER_SECOND, IMAGE_TOKENS, PDF_PAGE_TOKENS, tuning_data_stats
from tunery.data.validation import MAX_IMAGES_PER_EXAMPLE, MAX_PDF_PAGES, read_examples

VLM = ("text", "image")


def row(*parts: dict, answer: str = "red") -> dict:
    return {
        "contents": [
            {"role": "user", "parts": [{"text": "what colour is this"}, *parts]},
            {"role": "model", "parts": [{"text": answer}]},
        ]
    }


def file_part(mime: str, uri: str) -> dict:
    return {"fileData": {"mimeType": mime, "fileUri": uri}}


def inline_part(mime: str, payload: bytes) -> dict:
    return {"inlineData": {"mimeType": mime, "data": base64.b64encode(payload).decode()}}


def blank_pdf(pages: int) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=72, height=72)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The bad-media corpus of #15, for a text+image model, beside its media (img/, docs/)."""
    (tmp_path / "img").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(files.image_bytes("PNG", (16, 16), (255, 0, 0)))
    (tmp_path / "img" / "photo.png").write_bytes(files.image_bytes("JPEG", (16, 16)))  # a JPEG named .png
    (tmp_path / "docs" / "long.pdf").write_bytes(blank_pdf(MAX_PDF_PAGES + 1))
    png = files.image_bytes("PNG", (24, 24))
    red = file_part("image/png", "img/red.png")
    rows = [
        row(red),  # 1: fine
        row(file_part("image/png", "img/cat.png")),  # 2: missing file
        row(inline_part("image/png", png[:-20])),  # 3: truncated PNG
        row(file_part("image/png", "img/photo.png")),  # 4: JPEG labelled PNG
        row(*[red] * (MAX_IMAGES_PER_EXAMPLE + 1)),  # 5: 31 images
        row(file_part("application/pdf", "docs/long.pdf")),  # 6: a 301-page PDF
        row(inline_part("audio/wav", files.wav_bytes(0.25))),  # 7: audio for an image-only model
        row(red, answer="blue"),  # 8: fine
    ]
    return write(tmp_path / "train.jsonl", rows)


EXPECTED = [
    (2, "contents[0].parts[1].fileData.fileUri", "file not found: img/cat.png"),
    (3, "contents[0].parts[1].inlineData.data", "truncated image/png (no IEND chunk at the end): inline data"),
    (4, "contents[0].parts[1].fileData.mimeType", "declared image/png but the bytes are image/jpeg: img/photo.png"),
    (5, "contents[0].parts[31].fileData", "31 images in this example; at most 30 images per example"),
    (6, "contents[0].parts[1].fileData", "the PDF has 301 pages; at most 300 pages per PDF"),
    (7, "contents[0].parts[1].inlineData", "MODEL takes text, image only, not audio (audio/wav)"),
]


def test_the_bad_media_corpus_is_reported_by_line_and_field(corpus: Path) -> None:
    report = read_examples(corpus, model_id="tiny-vlm", modalities=VLM)
    got = [(p.line, p.field, p.message) for p in report.problems]
    assert got == [(n, f, m.replace("MODEL", "tiny-vlm")) for n, f, m in EXPECTED]
    assert [e.line for e in report.examples] == [1, 8] and not report.warnings
    assert str(report.problems[0]) == f"{corpus}:2: contents[0].parts[1].fileData.fileUri: file not found: img/cat.png"
    assert [[(m.modality, m.width) for m in media.parts] for media in report.media] == [[("image", 16)]] * 2


def test_an_image_for_a_text_only_model_and_a_textless_pdf_page(tmp_path: Path) -> None:
    (tmp_path / "scan.pdf").write_bytes(files.pdf_bytes(["Invoice 42", None, None, "Total", None]))
    path = write(
        tmp_path / "train.jsonl",
        [
            row(inline_part("image/png", files.image_bytes())),
            row(file_part("application/pdf", "scan.pdf"), answer="invoice"),
        ],
    )
    report = read_examples(path, model_id="smollm2-135m-instruct", modalities=("text",))
    assert [(p.line, p.field, p.message, p.severity) for p in report.problems] == [
        (1, "contents[0].parts[1].inlineData", "smollm2-135m-instruct takes text only, not image (image/png)", "error"),
        (
            2,
            "contents[0].parts[1].fileData",
            "pages 2-3, 5 of 5 have no text layer (scanned or drawn); smollm2-135m-instruct reads PDFs as text "
            "and gets nothing from them",
            "warning",
        ),
    ]
    assert [e.line for e in report.examples] == [2]  # a warning keeps the example
    assert str(report.problems[1]).startswith(f"{path}:2: contents[0].parts[1].fileData: warning: pages 2-3, 5 ")
    # a vision-language model sees the pages as images: no warning
    assert read_examples(path, model_id="vlm", modalities=VLM).warnings == []


def test_per_example_and_per_file_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunery.data.validation as validation

    (tmp_path / "a.wav").write_bytes(files.wav_bytes(2.0, rate=8000))
    (tmp_path / "doc.pdf").write_bytes(blank_pdf(3))
    (tmp_path / "big.png").write_bytes(files.image_bytes("PNG", (64, 64)))
    monkeypatch.setattr(validation, "MAX_AUDIO_SECONDS", 1)  # limits are module constants: 2 s is over 1 s here
    monkeypatch.setattr(validation, "MAX_IMAGE_BYTES", 100)
    wav, pdf = file_part("audio/wav", "a.wav"), file_part("application/pdf", "doc.pdf")
    path = write(
        tmp_path / "train.jsonl",
        [
            row(wav, wav),  # two audio files
            row(*[pdf] * 5),  # five PDFs
            row(file_part("image/png", "big.png")),
            row({"fileData": {"mimeType": "video/mp4", "fileUri": "clip.mp4"}}),
        ],
    )
    report = read_examples(path, model_id="omni", modalities=("text", "image", "audio"))
    size = (tmp_path / "big.png").stat().st_size
    assert [(p.line, p.field, p.message) for p in report.problems] == [
        (1, "contents[0].parts[1].fileData", "the audio is 2 s long; at most 1 s per audio file"),
        (1, "contents[0].parts[2].fileData", "the audio is 2 s long; at most 1 s per audio file"),
        (1, "contents[0].parts[2].fileData", "2 audio files in this example; at most 1 audio file per example"),
        (2, "contents[0].parts[5].fileData", "5 PDFs in this example; at most 4 PDFs per example"),
        (3, "contents[0].parts[1].fileData", f"the image is {size} bytes; at most 100 bytes per image"),
        (4, "contents[0].parts[1].fileData", "omni takes text, image, audio only, not video (video/mp4)"),
    ]


def test_a_stream_has_no_folder_but_a_media_source_gives_one(corpus: Path) -> None:
    with corpus.open("rb") as fh:
        report = read_examples(fh, name="<stdin>", model_id="vlm", modalities=VLM)
    assert report.problems[0].message.startswith("no folder to resolve paths in")
    with corpus.open("rb") as fh:
        report = read_examples(
            fh, name="<stdin>", model_id="vlm", modalities=VLM, media_source=MediaSource(base=corpus.parent)
        )
    assert [(p.line, p.field) for p in report.problems] == [(n, f) for n, f, _ in EXPECTED]


def test_statistics_count_media_and_estimate_its_tokens(tmp_path: Path, tiny_tokenizer) -> None:
    (tmp_path / "a.png").write_bytes(files.image_bytes("PNG", (16, 8)))
    (tmp_path / "b.jpg").write_bytes(files.image_bytes("JPEG", (40, 30)))
    (tmp_path / "doc.pdf").write_bytes(files.pdf_bytes(["Invoice 42", "Total 7"]))
    rows = [
        row(file_part("image/png", "a.png")),
        row(file_part("image/png", "a.png"), file_part("image/jpeg", "b.jpg")),
        row(inline_part("audio/wav", files.wav_bytes(1.5, rate=8000))),
        row(file_part("application/pdf", "doc.pdf")),
        {"contents": [{"role": "user", "parts": [{"text": "hello"}]}, {"role": "model", "parts": [{"text": "hi"}]}]},
    ]
    path = write(tmp_path / "train.jsonl", rows)
    tokenizer = tiny_tokenizer("chatml")
    modalities = ("text", "image", "audio")
    report = read_examples(path, tokenizer=tokenizer, max_length=4096, model_id="omni", modalities=modalities)
    assert report.ok, report.problems
    text_only = read_examples(
        write(tmp_path / "text.jsonl", [r for r in rows if "pdf" not in json.dumps(r)]),
        tokenizer=tokenizer,
        max_length=4096,
    )
    estimates = [IMAGE_TOKENS, 2 * IMAGE_TOKENS, 48, 2 * PDF_PAGE_TOKENS, 0]  # 1.5 s x 32 tokens/s = 48
    assert AUDIO_TOKENS_PER_SECOND * 1.5 == 48
    stats = tuning_data_stats(report.encoded, epochs=1, batch_size=1)
    text_tokens = [len(e.input_ids) for e in report.encoded]
    assert stats["exampleTokenDistribution"]["sum"] == sum(text_tokens) + sum(estimates)
    assert stats["totalBillableTokenCount"] == sum(text_tokens) + sum(estimates)
    media = stats["mediaStats"]
    assert media["image"] == {
        "exampleCount": 2,
        "partCount": 3,
        "totalBytes": 2 * (tmp_path / "a.png").stat().st_size + (tmp_path / "b.jpg").stat().st_size,
        "partsPerExample": {"sum": 3, "min": 1, "max": 2, "mean": 1.5},
        "width": {"sum": 72, "min": 16, "max": 40, "mean": 24.0},
        "height": {"sum": 46, "min": 8, "max": 30, "mean": 15.33},
    }
    assert media["audio"]["seconds"] == {"sum": 1.5, "min": 1.5, "max": 1.5, "mean": 1.5}
    assert media["audio"]["secondsPerExample"]["max"] == 1.5
    assert media["pdf"]["pages"]["sum"] == 2 and media["pdf"]["pagesWithoutText"] == 0
    assert media["pdf"]["pagesPerExample"] == {"sum": 2, "min": 2, "max": 2, "mean": 2.0}
    assert media["mediaTokens"]["sum"] == sum(estimates) and media["mediaTokens"]["estimated"] is True
    # the text-only example's statistics are what a text dataset's are: no mediaStats key
    assert "mediaStats" not in tuning_data_stats(text_only.encoded[-1:], epochs=1, batch_size=1)
    # a PDF to a text-only model is its text (counted by the tokenizer), not page images
    as_text = read_examples(path, tokenizer=tokenizer, max_length=4096, modalities=("text",))
    pdf = next(e for e in as_text.encoded if getattr(e, "media", None) and e.media.of("pdf"))
    assert pdf.media_tokens == 0 and "Invoice" in tokenizer.decode(pdf.input_ids)


def test_media_over_max_length_is_a_warning_with_the_estimate(tmp_path: Path, tiny_tokenizer) -> None:
    png = files.image_bytes("PNG", (8, 8))
    path = write(tmp_path / "train.jsonl", [row(*[inline_part("image/png", png)] * 2)])
    report = read_examples(path, tokenizer=tiny_tokenizer("chatml"), max_length=300, modalities=VLM)
    (warning,) = report.warnings
    assert warning.field == "contents" and "with its media (516 estimated for 2 images), longer than maxLength 300" in (
        warning.message
    )
    assert report.ok and tuning_data_stats(report.encoded, 1, 1)["truncatedExampleIndices"] == [0]


# Through the CLI ---------------------------------------------------------------------------------------------------


def model_dir(tiny_model: Path, where: Path, **config: object) -> Path:
    """The tiny text model's tokenizer and config with ``config`` added: what ``tunery datasets`` reads of a
    model (its tokenizer, and its modalities from ``vision_config``/``audio_config``)."""
    where.mkdir()
    for item in tiny_model.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, where / item.name)
    data = json.loads((where / "config.json").read_text())
    (where / "config.json").write_text(json.dumps({**data, **config}))
    return where


def test_the_cli_reports_the_corpus_and_exits_1_without_a_traceback(corpus: Path, tiny_model: Path) -> None:
    vlm = model_dir(tiny_model, corpus.parent / "vlm", vision_config={"model_type": "siglip_vision_model"})
    result = CliRunner().invoke(app, ["datasets", "validate", str(corpus), "--model", str(vlm)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"{corpus}:") and "error(s)" not in line]
    model_id = str(vlm.resolve())
    assert lines == [f"{corpus}:{n}: {f}: {m.replace('MODEL', model_id)}" for n, f, m in EXPECTED]
    assert "6 error(s), 0 warning(s); 2 valid examples" in result.output

    text = model_dir(tiny_model, corpus.parent / "text")
    result = CliRunner().invoke(app, ["datasets", "validate", str(corpus), "--model", str(text)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{corpus}:1: contents[0].parts[1].fileData: {text.resolve()} takes text only, not image (image/png)" in (
        result.output
    )


def test_the_cli_stats_show_media(corpus: Path, tiny_model: Path) -> None:
    good = write(corpus.parent / "good.jsonl", [row(file_part("image/png", "img/red.png"))] * 3)
    vlm = model_dir(tiny_model, corpus.parent / "vlm", vision_config={"model_type": "siglip_vision_model"})
    result = CliRunner().invoke(app, ["datasets", "stats", str(good), "--model", str(vlm), "--json"])
    assert result.exit_code == 0, result.output
    media = json.loads(result.output)["supervisedTuningDataStats"]["mediaStats"]
    assert media["image"]["partCount"] == 3 and media["mediaTokens"]["sum"] == 3 * IMAGE_TOKENS
    shown = CliRunner().invoke(app, ["datasets", "stats", str(good), "--model", str(vlm)])
    assert shown.exit_code == 0 and "images: 3 in 3 examples, " in shown.output, shown.output


def test_an_uploaded_dataset_does_not_read_the_upload_folder(tmp_path: Path) -> None:
    """The server's upload folder holds every tenant's files: a dataset in it has no folder of its own, so a
    relative path cannot reach another upload (the server resolves files/{id} for the uploader alone)."""
    from tunery import settings

    uploads = settings.files_dir()
    (uploads / "media").mkdir(parents=True, exist_ok=True)
    (uploads / "media" / "someone-elses.png").write_bytes(files.image_bytes())
    path = write(uploads / "upload-test.jsonl", [row(file_part("image/png", "media/someone-elses.png"))])
    try:
        report = read_examples(path, model_id="vlm", modalities=VLM)
    finally:
        path.unlink()
        shutil.rmtree(uploads / "media")
    assert [(p.line, p.field, p.message.split(" (")[0]) for p in report.problems] == [
        (1, "contents[0].parts[1].fileData.fileUri", "no folder to resolve paths in")
    ]


def test_tune_fetches_remote_media_only_when_allowed(tmp_path: Path, tiny_model: Path) -> None:
    """``tunery tune`` refuses an http(s) media part before any job exists unless ``--allow-remote-media`` is
    given, which reaches the job's media source (nothing is fetched here)."""
    from tunery.tuning.prepare import media_source
    from tunery.tuning.spec import TuningSpec

    vlm = model_dir(tiny_model, tmp_path / "vlm", vision_config={"model_type": "siglip_vision_model"})
    data = write(tmp_path / "remote.jsonl", [row(file_part("image/png", "https://example.com/red.png"))])
    result = CliRunner().invoke(app, ["tune", "--model", str(vlm), "--train", str(data), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{data}:1: contents[0].parts[1].fileData.fileUri: remote media is not fetched unless allowed" in (
        result.output
    )
    assert not (tmp_path / "out").exists()
    assert media_source(TuningSpec(train=str(data), allow_remote_media=True), str(data)).allow_remote
    assert not media_source(TuningSpec(train=str(data)), str(data)).allow_remote
