"""PDF parts (#15): a generated PDF with known text round-trips through extraction for a text-only model and
through page rendering for a tiny vision-language model (Qwen2-VL built from a config, as in test_vlm_tuning).

    .venv/bin/python -m pytest tests/unit/test_pdf_parts.py -q
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import test_vlm_tuning as vlm  # the VLM builders shared with the tuning tests (same folder)
import torch

from tunery.data import IGNORE_INDEX, Example, Part, Turn, documents, encode, prompt_ids
from tunery.errors import DatasetError
from tunery.models import multimodal as families
from tunery.tuning import multimodal

pytest.importorskip("pypdf")
pytest.importorskip("pypdfium2")

PAGES = ["alpha red page one", "beta green page two", "gamma blue page three"]
PROMPT = "what colour is this square"


def make_pdf(pages: list[str | None], size: tuple[int, int] = (300, 200)) -> bytes:
    """A PDF written by hand: one page per item, each one line of Helvetica text (None: a grey box and no text
    layer). Offsets in the cross-reference table are counted, so pypdf and pdfium read it without repairs."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for text in pages:
        if text is None:
            stream, resources = b"0.5 g 20 20 100 100 re f", b"<< >>"
        else:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
            stream, resources = b"BT /F1 18 Tf 20 100 Td (" + escaped + b") Tj ET", b"<< /Font << /F1 3 0 R >> >>"
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources %s /Contents %d 0 R >>"
            % (size[0], size[1], resources, len(objects))
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_part(pages: list[str | None], **size: tuple[int, int]) -> Part:
    return Part("inlineData", mime_type="application/pdf", data=base64.b64encode(make_pdf(pages, **size)).decode())


def document_example(part: Part, answer: str = "red") -> Example:
    return Example(
        turns=(
            Turn("user", (Part("text", "read this"), part, Part("text", PROMPT))),
            Turn("model", (Part("text", answer),)),
        ),
        line=5,
    )


def test_text_model_reads_each_page_under_its_marker_in_order() -> None:
    text = documents.expand_pdf_for_text(pdf_part(PAGES), None)
    assert text == "\n\n".join(f"--- page {n} ---\n{page}" for n, page in enumerate(PAGES, 1))
    # A page with no text layer keeps its marker (and is named for validation's warning).
    part = pdf_part([PAGES[0], None, PAGES[2]])
    assert documents.expand_pdf_for_text(part, None) == (
        f"--- page 1 ---\n{PAGES[0]}\n\n--- page 2 ---\n\n--- page 3 ---\n{PAGES[2]}"
    )
    assert documents.empty_pages(part, None) == [2]


def test_text_model_tokenized_prompt_holds_the_page_texts_in_order(tiny_tokenizer, tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer("chatml")
    (tmp_path / "doc.pdf").write_bytes(make_pdf(PAGES))
    by_file = Part("fileData", mime_type="application/pdf", uri="doc.pdf")
    for part, source in ((pdf_part(PAGES), None), (by_file, tmp_path)):
        example = document_example(part, answer="yellow")
        encoded = encode(tokenizer, example, max_length=1024, source=source)
        rendered = tokenizer.decode(encoded.input_ids)
        at = [rendered.index(s) for s in ("read this", *(f"--- page {n} ---\n{p}" for n, p in enumerate(PAGES, 1)))]
        assert at == sorted(at) and rendered.index(PROMPT) > at[-1]
        assert "read this\n\n--- page 1 ---" in rendered and f"{PAGES[2]}\n\n{PROMPT}" in rendered
        trained = [i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
        assert tokenizer.decode(trained).strip().startswith("yellow")  # the document is prompt, never trained
        prompt = tokenizer.decode(prompt_ids(tokenizer, example, source))
        assert all(f"--- page {n} ---\n{p}" in prompt for n, p in enumerate(PAGES, 1)) and "yellow" not in prompt
    with pytest.raises(DatasetError, match=r"line 5: contents\[0\]\.parts\[1\]: .*no folder to resolve"):
        encode(tokenizer, document_example(by_file), max_length=1024)


def test_vlm_gets_one_image_per_page_and_the_text_layer() -> None:
    part = pdf_part(PAGES, size=(2000, 1000))  # a large page: rendering is bounded
    parts = documents.expand_pdf_for_vlm(part, None)
    assert [p.mime_type for p in parts[:-1]] == ["image/png"] * len(PAGES)
    assert parts[-1].kind == "text" and parts[-1].text == documents.expand_pdf_for_text(part, None)
    images = documents.page_images(part, None)
    assert len(images) == len(PAGES)
    assert all(image.size == (documents.MAX_PAGE_SIDE, documents.MAX_PAGE_SIDE // 2) for image in images)
    # Page order: each rendered page is its own (the ink differs page to page), the same as the image parts.
    pixels = [image.tobytes() for image in images]
    assert len(set(pixels)) == len(PAGES)
    assert [families.decode_image(p, None).tobytes() for p in parts[:-1]] == pixels
    # Pages without text: no text part, the page count kept.
    blank = documents.expand_pdf_for_vlm(pdf_part([None, None]), None)
    assert [p.mime_type for p in blank] == ["image/png", "image/png"]


def test_tiny_qwen2_vl_takes_the_pages_as_images_and_trains_on_them() -> None:
    model, processor = vlm.qwen2_vl()
    family = families.require_family(model.config)
    part = pdf_part(PAGES)
    example = document_example(part)
    batch, media = multimodal.process(family, processor, [example], None)
    tokenizer = processor.tokenizer
    ids = batch["input_ids"][0].tolist()
    # The processor got N page images: one grid per page, its placeholder tokens expanded per grid.
    grids = batch["image_grid_thw"]
    assert grids.shape[0] == len(PAGES) and len(media[0][0]) == len(PAGES)
    merge = processor.image_processor.merge_size
    assert ids.count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) == int(grids.prod(-1).sum()) // merge**2
    assert ids.count(tokenizer.convert_tokens_to_ids("<|vision_start|>")) == len(PAGES)
    # The pixels are the rendered pages, in page order.
    expected = processor.image_processor(images=documents.page_images(part, None), return_tensors="pt")
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    # The text layer follows the page images; the loss is on the answer and its end of turn only.
    text = tokenizer.decode(ids)
    assert text.index("<|vision_end|>") < text.index("--- page 1 ---") < text.index(PAGES[2]) < text.index(PROMPT)
    trained = [i for i, label in zip(ids, batch["labels"][0].tolist(), strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "red<|im_end|>"
    # One training step on the PDF-derived inputs: finite loss, weights move.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.lm_head.weight.detach().clone()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # the pages' pixels reach the loss
    optimizer.step()
    assert not torch.equal(before, model.lm_head.weight)


def test_unsupported_media_beside_a_pdf_is_named_by_its_own_index() -> None:
    _, processor = vlm.qwen2_vl()
    family = families.QWEN2_VL
    audio = Part("inlineData", mime_type="audio/wav", data="AAAA")
    example = Example(turns=(Turn("user", (pdf_part(PAGES), audio)), Turn("model", (Part("text", "red"),))), line=9)
    with pytest.raises(DatasetError, match=r"line 9: contents\[0\]\.parts\[1\]: Qwen2-VL models take text, image"):
        multimodal.process(family, processor, [example], None)


def test_tune_a_tiny_vlm_on_lines_with_pdf_parts(tmp_path: Path) -> None:
    """``tune()`` end to end: a JSONL whose lines carry a PDF part (inline, and by a path beside the file)."""
    from tunery.tuning import TuningSpec, tune

    model, processor = vlm.qwen2_vl()
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)
    (tmp_path / "doc.pdf").write_bytes(make_pdf(PAGES[:2]))
    inline = {"inlineData": {"mimeType": "application/pdf", "data": pdf_part(PAGES).data}}
    by_path = {"fileData": {"mimeType": "application/pdf", "fileUri": "doc.pdf"}}
    rows = [
        {"contents": [{"role": "user", "parts": [pdf, {"text": PROMPT}]}, vlm.model_turn(answer)]}
        for pdf, answer in ((inline, "red"), (by_path, "green"), (inline, "blue"), (by_path, "yellow"))
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TuningSpec(
        train=str(train),
        base_model=str(base),
        method="FULL",
        epochs=1,
        batch_size=2,
        output=str(tmp_path / "tuned"),
        device="cpu",
    )
    tuned = tune(spec)
    records = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["train_loss"] > 0 for r in steps)
    stats = json.loads((tuned / "tunery.json").read_text())["tuningDataStats"]["supervisedTuningDataStats"]
    assert stats["tuningDatasetExampleCount"] == 4


def test_tune_a_text_model_on_lines_with_pdf_parts(tiny_model: Path, tmp_path: Path) -> None:
    """``tune()`` of a text-only model: each PDF part is trained on as its page-marked text (counted in the
    dataset's tokens), inline or by a path beside the JSONL file."""
    from tunery.models.loading import load_tokenizer
    from tunery.tuning import TuningSpec, tune

    (tmp_path / "doc.pdf").write_bytes(make_pdf(PAGES[:2]))
    inline = {"inlineData": {"mimeType": "application/pdf", "data": pdf_part(PAGES).data}}
    by_path = {"fileData": {"mimeType": "application/pdf", "fileUri": "doc.pdf"}}
    rows = [
        {"contents": [{"role": "user", "parts": [{"text": "read this"}, pdf, {"text": PROMPT}]}, vlm.model_turn(a)]}
        for pdf, a in ((inline, "yellow"), (by_path, "green"), (inline, "yellow"), (by_path, "green"))
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TuningSpec(
        train=str(train),
        base_model=str(tiny_model),
        epochs=1,
        batch_size=2,
        output=str(tmp_path / "tuned"),
        device="cpu",
    )
    tuned = tune(spec)
    steps = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "train_loss" in r] == [1, 2]
    tokenizer = load_tokenizer(tiny_model)
    inline_part, file_part = pdf_part(PAGES), Part("fileData", mime_type="application/pdf", uri="doc.pdf")
    expected = [
        len(encode(tokenizer, document_example(p, a), 1024, tmp_path).input_ids)
        for p, a in ((inline_part, "yellow"), (file_part, "green"))
    ]
    stats = json.loads((tuned / "tunery.json").read_text())["tuningDataStats"]["supervisedTuningDataStats"]
    assert stats["totalBillableTokenCount"] == 2 * sum(expected)  # the pages' text is in every example's tokens
