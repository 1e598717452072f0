"""Evaluation, prediction and reports with image parts (#15): a tiny Qwen2-VL (built from a config by the shared
builder in test_vlm_tuning) tuned once on solid colours, then evaluated (in the loop and by ``tunery compare``)
and asked (``tunery predict``) on held-out images given as files beside the JSONL and inline."""

from __future__ import annotations

import base64
import io
import json
import random
import re
from types import SimpleNamespace

import pytest

pytest.importorskip("PIL")
import test_vlm_tuning as vlm  # the VLM builders, colours and row writers shared with the tuning tests
from PIL import Image
from typer.testing import CliRunner

from tunery.cli import app


def image_row(uri: str, label: str) -> dict:
    image = {"fileData": {"mimeType": "image/png", "fileUri": uri}}
    return {"contents": [{"role": "user", "parts": [image, {"text": vlm.PROMPT}]}, vlm.model_turn(label)]}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The base dir, the FULL-tuned dir (tuned with a validation file whose images are files beside it)."""
    from tunery.tuning import TuningSpec, tune

    root = tmp_path_factory.mktemp("mm-eval")
    model, processor = vlm.qwen2_vl()
    base = root / "base"
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)
    rng = random.Random(0)
    train = [(label, vlm.shade(rgb, rng)) for _ in range(6) for label, rgb in vlm.COLOURS.items()]
    held_out = [(label, vlm.shade(rgb, rng)) for _ in range(2) for label, rgb in vlm.COLOURS.items()]
    rng.shuffle(train)
    folder = root / "held-out"
    (folder / "images").mkdir(parents=True)
    for k, (_, rgb) in enumerate(held_out):
        (folder / "images" / f"{k}.png").write_bytes(base64.b64decode(vlm.png(rgb)))
    validation = folder / "validation.jsonl"
    validation.write_text("".join(json.dumps(image_row(f"images/{k}.png", label)) + "\n"
                                  for k, (label, _) in enumerate(held_out)))  # fmt: skip
    spec = TuningSpec(
        train=str(vlm.write_rows(root / "train.jsonl", train)),
        validation=str(validation),
        base_model=str(base),
        method="FULL",
        epochs=40,
        batch_size=4,
        learning_rate_multiplier=100,
        output=str(root / "tuned"),
        device="cpu",
    )
    return SimpleNamespace(root=root, base=base, tuned=tune(spec), validation=validation, held_out=held_out)


def test_tuning_evaluates_the_vlm_on_its_image_validation_file(tuned: SimpleNamespace) -> None:
    """The in-loop evaluation after tuning runs the image examples through the VLM (it said "takes text only")."""
    evaluation = json.loads((tuned.tuned / "evaluation.json").read_text())
    assert "error" not in evaluation, evaluation
    assert evaluation["metrics"]["examples"] == len(tuned.held_out)
    assert evaluation["metrics"]["exact_match"] >= 0.95
    predictions = [json.loads(line) for line in (tuned.tuned / "predictions.jsonl").read_text().splitlines()]
    assert [p["target"] for p in predictions] == [label for label, _ in tuned.held_out]
    assert all(p["media"] == ["image/png"] for p in predictions)
    assert all(p["prompt_tokens"] > 6 for p in predictions)  # the image's tokens are in the prompt


def test_compare_base_and_tuned_on_images_with_thumbnails_of_wrong_answers(tuned: SimpleNamespace) -> None:
    out = tuned.root / "compare"
    args = ["compare", "--data", str(tuned.validation), "-c", f"base={tuned.base}", "-c", f"tuned={tuned.tuned}"]
    result = CliRunner().invoke(app, [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "comparison.json").read_text())
    scores = {c["candidate"]["name"]: c["metrics"]["exact_match"] for c in summary["candidates"]}
    assert scores["tuned"] >= 0.95
    assert scores["base"] <= 0.5  # untuned: at chance (4 colours)
    base = (out / "candidates" / "base" / "predictions.jsonl").read_text().splitlines()
    wrong = [p for p in map(json.loads, base) if p["score"] < 1.0]
    assert wrong
    # The HTML: one thumbnail per wrong answer, in the base's error section, of that line's own image.
    page = (out / "report.html").read_text()
    base_section = page[page.index("Error analysis: base") : page.index("Error analysis: tuned")]
    found = re.findall(r'<td>(\d+)</td><td><img alt="[^"]*" src="data:image/jpeg;base64,([^"]+)">', base_section)
    assert [int(line) for line, _ in found] == [p["line"] for p in wrong]
    for line, data in found:
        thumb = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        assert max(thumb.size) <= 96
        colour = thumb.getpixel((thumb.size[0] // 2, thumb.size[1] // 2))
        expected = tuned.held_out[int(line) - 1][1]
        assert all(abs(a - b) <= 12 for a, b in zip(colour, expected, strict=True)), (line, colour, expected)
    assert "data:image" not in page[page.index("Error analysis: tuned") :]  # no wrong answers, no thumbnails
    markdown = (out / "report.md").read_text()
    assert f"thumbnails/base-line-{wrong[0]['line']}.jpg" in markdown
    assert (out / "thumbnails" / f"base-line-{wrong[0]['line']}.jpg").is_file()
    # tunery evaluate (one candidate): the same predictions as the base's in the comparison, stored at the top.
    single = tuned.root / "evaluate"
    result = CliRunner().invoke(app, ["evaluate", str(tuned.base), "--data", str(tuned.validation), "-o", str(single)])
    assert result.exit_code == 0, result.output
    again = [json.loads(line) for line in (single / "predictions.jsonl").read_text().splitlines()]
    assert [p["output"] for p in again] == [json.loads(line)["output"] for line in base]
    assert json.loads((single / "evaluation.json").read_text())["metrics"]["exact_match"] == scores["base"]
    assert 'src="data:image/jpeg;base64,' in (single / "report.html").read_text()


def test_predict_batch_file_with_image_paths_and_inline_images(tuned: SimpleNamespace) -> None:
    """``tunery predict --input --output``: fileData paths resolve against the input file's folder, inlineData is
    decoded; a missing image fails its own line only."""
    folder = tuned.root / "requests"
    (folder / "pictures").mkdir(parents=True)
    lines, expected = [], []
    for k, (label, rgb) in enumerate(tuned.held_out[:4]):
        if k % 2:
            image = {"inlineData": {"mimeType": "image/png", "data": vlm.png(rgb)}}
        else:
            (folder / "pictures" / f"{k}.png").write_bytes(base64.b64decode(vlm.png(rgb)))
            image = {"fileData": {"mimeType": "image/png", "fileUri": f"pictures/{k}.png"}}
        request = {"contents": [{"role": "user", "parts": [image, {"text": vlm.PROMPT}]}]}
        lines.append({"request": {**request, "generationConfig": {"maxOutputTokens": 4}}})
        expected.append(label)
    missing = {"fileData": {"mimeType": "image/png", "fileUri": "pictures/nowhere.png"}}
    lines.append({"request": {"contents": [{"role": "user", "parts": [missing, {"text": vlm.PROMPT}]}]}})
    requests = folder / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = tuned.root / "out" / "results.jsonl"
    result = CliRunner().invoke(app, ["predict", str(tuned.tuned), "--input", str(requests), "--output", str(results)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in results.read_text().splitlines()]
    answers = [r["response"]["candidates"][0]["content"]["parts"][0]["text"] for r in records[:4]]
    assert answers == expected
    assert records[0]["request"]["contents"][0]["parts"][0]["fileData"]["fileUri"] == "pictures/0.png"  # as given
    assert "response" not in records[4]
    assert "contents[0].parts[0].fileData" in records[4]["status"] and "not found" in records[4]["status"]
    # Without --output: dataset-form lines answered in this process, one JSON line each.
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(image_row(f"pictures/{k}.png", expected[k])) + "\n" for k in (0, 2)))
    result = CliRunner().invoke(app, ["predict", str(tuned.tuned), "--input", str(prompts), "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [p["output"] for p in printed] == [p["target"] for p in printed] == [expected[0], expected[2]]


def test_a_tuned_lora_vlm_is_served_with_its_adapter(tmp_path) -> None:
    """A LoRA-tuned VLM dir (tunery.json + adapter, no config.json) is served on its base with the adapter merged:
    the logits equal PeftModel's unmerged ones; the in-loop evaluation ran through it; a catalog VLM id counts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from tunery.data.formats import Example, Part, Turn
    from tunery.serving.multimodal import VisionLanguageModel, served_modalities, vlm_location
    from tunery.tuning import TuningSpec, tune

    model, processor = vlm.qwen2_vl()
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)
    items = list(vlm.COLOURS.items())
    spec = TuningSpec(
        train=str(vlm.write_rows(tmp_path / "train.jsonl", items)),
        validation=str(vlm.write_rows(tmp_path / "validation.jsonl", items[:2])),
        base_model=str(base),
        epochs=1,
        batch_size=2,
        learning_rate_multiplier=10,
        output=str(tmp_path / "tuned"),
        device="cpu",
    )
    tuned = tune(spec)
    assert not (tuned / "config.json").exists()
    assert vlm_location(tuned) == (str(base), str(tuned))
    assert served_modalities(tuned) == ("text", "image")
    assert json.loads((tuned / "evaluation.json").read_text())["metrics"]["examples"] == 2
    served = VisionLanguageModel(tuned)
    example = Example(turns=(Turn("user", (vlm.image_part(vlm.COLOURS["red"]), Part("text", vlm.PROMPT))),))
    inputs = served.inputs(example)
    reference = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), tuned).eval()
    with torch.inference_mode():
        merged = served.model(**inputs).logits
        unmerged = reference(**inputs).logits
        untuned = model.eval()(**inputs).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)
    assert (merged - untuned).abs().max() > 1e-4  # the adapter is in the served weights
    assert vlm_location("smolvlm-256m-instruct") == ("smolvlm-256m-instruct", None)  # read from the catalog only
    assert served_modalities("smolvlm-256m-instruct") == ("text", "image")
    assert vlm_location("smollm2-135m-instruct") is None


def test_report_thumbnails_of_an_image_file_and_a_pdf_page(tmp_path) -> None:
    """``thumbnails``: the first image of each example, or a PDF's first page, at most 96 px a side; an example
    without media, or whose file is gone, gets none (the report shows its MIME type instead)."""
    import pypdfium2 as pdfium

    from tunery.evaluation.report import thumbnails

    big = Image.new("RGB", (400, 200), (30, 200, 40))
    big.save(tmp_path / "wide.png")
    doc = pdfium.PdfDocument.new()
    doc.new_page(612, 792)
    buffer = io.BytesIO()
    doc.save(buffer)
    pdf = {"inlineData": {"mimeType": "application/pdf", "data": base64.b64encode(buffer.getvalue()).decode()}}
    rows = [
        image_row("wide.png", "green"),
        {"contents": [{"role": "user", "parts": [pdf, {"text": "what is it"}]}, vlm.model_turn("a page")]},
        {"contents": [{"role": "user", "parts": [{"text": "no media"}]}, vlm.model_turn("none")]},
        image_row("gone.png", "red"),
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = thumbnails(str(data), [1, 2, 3, 4], "c")
    assert sorted(found) == [1, 2]
    wide = Image.open(io.BytesIO(found[1].jpeg))
    assert wide.size == (96, 48)
    assert all(abs(a - b) <= 12 for a, b in zip(wide.convert("RGB").getpixel((48, 24)), (30, 200, 40), strict=True))
    page = Image.open(io.BytesIO(found[2].jpeg))
    assert max(page.size) == 96 and page.size[0] < page.size[1]  # a portrait page
    assert found[2].data_uri().startswith("data:image/jpeg;base64,")


def test_prompts_and_perturbations_keep_the_media_in_place() -> None:
    from tunery.data.formats import Example, Part, Turn
    from tunery.evaluation.perturb import perturb_example
    from tunery.evaluation.prompts import Prompt
    from tunery.evaluation.run import media_types

    image = vlm.image_part(vlm.COLOURS["blue"])
    example = Example(
        turns=(
            Turn("user", (Part("text", "look:"), image, Part("text", vlm.PROMPT))),
            Turn("model", (Part("text", "blue"),)),
        ),
        line=3,
    )
    asked = Prompt(template="Answer in one word. {input}").apply(example).turns[-1]
    assert [p.kind for p in asked.parts] == ["text", "inlineData"]
    assert asked.parts[0].text == f"Answer in one word. look:{vlm.PROMPT}" and asked.parts[1] == image
    shuffled = perturb_example(example, "case", seed=1).turns[0]
    assert [p.kind for p in shuffled.parts] == ["text", "inlineData"] and shuffled.parts[1] == image
    assert shuffled.parts[0].text.lower() == f"look:{vlm.PROMPT}".lower()
    only_image = Example(turns=(Turn("user", (image,)), Turn("model", (Part("text", "blue"),))))
    assert Prompt().apply(only_image).turns[-1].parts == (image,)
    assert media_types(example) == ("image/png",)


def test_a_batch_job_reads_its_tenants_media_uploads_only(tmp_path) -> None:
    """A server's batch job inlines ``files/{id}`` from the job's tenant's media uploads; a dataset upload, another
    tenant's upload and a path outside the data root fail their own lines, named by field."""
    from tunery.data.media import MediaSource
    from tunery.jobs.batch import Line, _inline, media_uploads
    from tunery.jobs.store import Store, StoredFile, new_id

    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    (tmp_path / "red.png").write_bytes(base64.b64decode(vlm.png(vlm.COLOURS["red"])))
    (tmp_path / "rows.jsonl").write_text("{}\n")

    def upload(tenant: str, path: str, stats: dict) -> str:
        record = StoredFile(new_id(), tenant, path, str(tmp_path / path), 1, "", 0, "", stats, "")
        return store.add_file(record).id

    image = upload("acme", "red.png", {"mimeType": "image/png"})
    dataset = upload("acme", "rows.jsonl", {})
    theirs = upload("other", "red.png", {"mimeType": "image/png"})
    media = MediaSource(root=tmp_path / "root", resolve_file=media_uploads(store, "acme"))

    def line(uri: str) -> Line:
        part = {"fileData": {"mimeType": "image/png", "fileUri": uri}}
        request = {"contents": [{"role": "user", "parts": [{"text": "what"}, part]}]}
        found = Line(7, {"request": request}, "vertex", request=request)
        _inline(found, media)
        return found

    ok = line(f"files/{image}")
    assert ok.error is None and ok.request is not None
    assert ok.request["contents"][0]["parts"][1]["inlineData"]["data"] == vlm.png(vlm.COLOURS["red"])
    for uri, why in ((f"files/{dataset}", "is a JSONL dataset"), (f"files/{theirs}", "not found"),
                     ("../red.png", "'..' is not allowed")):  # fmt: skip
        failed = line(uri)
        assert failed.request is None and failed.error is not None
        assert failed.error.startswith("line 7: request.contents[0].parts[1].fileData: ") and why in failed.error
