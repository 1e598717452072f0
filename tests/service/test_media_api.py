"""Media through the HTTP API (#15), against a real ``tunery serve``: a tiny Qwen2-VL (random weights, built from a
config by the shared builder in tests/unit/test_vlm_tuning.py) served as a fully tuned model of the default tenant.

generateContent and countTokens with an inline image, an image sent to the text-only default model (a 400 naming
the model and the modality), an image uploaded to ``/v1/files`` and named by ``fileData.fileUri: files/{id}``,
and dataset uploads whose media is missing or mislabelled (a 400 naming the line). A catalog VLM id
(``smolvlm-256m-instruct``) is served from local weights (a tiny Idefics3 in an offline Hugging Face cache, as a
download would leave it), and a LoRA adapter tuned on the Qwen2-VL dir is served on its base.

    .venv/bin/python -m pytest tests/service/test_media_api.py -q
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("PIL")

from tunery.jobs.store import TunedModel, new_id, now
from tunery.models.catalog import CATALOG, DEFAULT_MODEL

TESTS = Path(__file__).resolve().parents[1]


def by_path(name: str, path: Path):
    """A test module loaded by its path (without registering its fixtures again)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CATALOG_VLM = "smolvlm-256m-instruct"
vlm = by_path("_vlm_builders", TESTS / "unit" / "test_vlm_tuning.py")  # qwen2_vl(), png(), PROMPT
Service = by_path("_media_service_conftest", TESTS / "service" / "conftest.py").Service
RED = (220, 30, 30)


def jpeg(rgb: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (vlm.IMAGE, vlm.IMAGE), rgb).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_train: Callable[..., Path]) -> Iterator:
    root = tmp_path_factory.mktemp("media")
    svc = Service(root, tiny_model, make_train(20), 1, None)
    model, processor = vlm.qwen2_vl()
    model.save_pretrained(svc.data_root / "vlm")
    processor.save_pretrained(svc.data_root / "vlm")
    # the catalog's small VLM, as snapshot_download leaves it in the cache (refs/main -> snapshots/<commit>)
    repo = root / "hub" / ("models--" + (CATALOG[CATALOG_VLM].hub or "").replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model, processor = vlm.idefics3()
    model.save_pretrained(repo / "snapshots" / commit)
    processor.save_pretrained(repo / "snapshots" / commit)
    svc.env.update(HF_HUB_CACHE=str(root / "hub"), HF_HUB_OFFLINE="1")
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture(scope="module")
def model(server) -> str:
    """The VLM directory as a tuned model of the default tenant (the loopback caller without a key)."""
    record = TunedModel(new_id(), "default", new_id(), "vlm", "vlm", "FULL", str(server.data_root / "vlm"), now())
    server.store.add_tuned_model(record)
    return record.id


def turn(*parts: dict) -> dict:
    return {"contents": [{"role": "user", "parts": [*parts, {"text": vlm.PROMPT}]}]}


def inline(rgb: tuple[int, int, int]) -> dict:
    return {"inlineData": {"mimeType": "image/png", "data": vlm.png(rgb)}}


def generate(server, model: str, body: dict) -> dict:
    response = server.client.post(
        f"/v1/models/{model}:generateContent", json={**body, "generationConfig": {"maxOutputTokens": 4}}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_generate_content_and_count_tokens_with_an_inline_image(server, model: str) -> None:
    answer = generate(server, model, turn(inline(RED)))
    assert answer["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS")
    count = server.client.post(f"/v1/models/{model}:countTokens", json=turn(inline(RED))).json()
    text_only = server.client.post(f"/v1/models/{model}:countTokens", json=turn()).json()
    # a 32x32 image in 8-pixel patches merged 2x2: 4 image tokens, plus the vision start and end markers
    assert count["totalTokens"] == text_only["totalTokens"] + 6
    assert answer["usageMetadata"]["promptTokenCount"] == count["totalTokens"]


def test_a_streamed_image_request_ends_with_the_whole_answer(server, model: str) -> None:
    body = {**turn(inline(RED)), "generationConfig": {"maxOutputTokens": 4}}
    response = server.client.post(f"/v1/models/{model}:streamGenerateContent", params={"alt": "sse"}, json=body)
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    text = "".join(p.get("text", "") for e in events for p in e["candidates"][0]["content"]["parts"])
    whole = generate(server, model, turn(inline(RED)))
    assert text == whole["candidates"][0]["content"]["parts"][0]["text"]
    usage, expected = events[-1]["usageMetadata"], whole["usageMetadata"]
    assert usage["promptTokenCount"] == expected["promptTokenCount"] > 6  # the image reached the processor


def test_an_image_for_the_text_only_default_model_is_a_400_naming_both(server) -> None:
    for op in ("generateContent", "countTokens"):
        response = server.client.post(f"/v1/models/{DEFAULT_MODEL}:{op}", json=turn(inline(RED)))
        assert response.status_code == 400, response.text
        (violation,) = response.json()["error"]["details"][0]["fieldViolations"]
        assert violation["field"] == "contents[0].parts[0].inlineData"
        assert DEFAULT_MODEL in violation["description"] and "not image" in violation["description"], violation


def test_an_uploaded_image_is_named_by_its_file_id(server, model: str) -> None:
    png = base64.b64decode(vlm.png(RED))
    uploaded = server.client.post("/v1/files", files={"file": ("red.png", png)})
    assert uploaded.status_code == 201, uploaded.text
    record = uploaded.json()
    assert record["mimeType"] == "image/png" and record["sizeBytes"] == str(len(png))
    assert record["supervisedTuningDataStats"]["width"] == vlm.IMAGE
    by_file = {"fileData": {"mimeType": "image/png", "fileUri": record["name"]}}
    answers = [generate(server, model, turn(part)) for part in (by_file, inline(RED))]
    assert answers[0]["candidates"] == answers[1]["candidates"]  # the same pixels: the same greedy answer
    assert answers[0]["usageMetadata"]["promptTokenCount"] == answers[1]["usageMetadata"]["promptTokenCount"]
    assert server.client.get(f"/v1/{record['name']}").json()["mimeType"] == "image/png"

    wrong = {"fileData": {"mimeType": "image/jpeg", "fileUri": record["name"]}}
    missing = {"fileData": {"mimeType": "image/png", "fileUri": "files/20260101000000aaaaaaaaaaaa"}}
    response = server.client.post(f"/v1/models/{model}:generateContent", json=turn(wrong, missing))
    assert response.status_code == 400
    fields = {v["field"]: v["description"] for v in response.json()["error"]["details"][0]["fieldViolations"]}
    assert "is image/png" in fields["contents[0].parts[0].fileData.mimeType"]
    assert "not found" in fields["contents[0].parts[1].fileData.fileUri"]

    truncated = server.client.post("/v1/files", files={"file": ("cut.png", png[: len(png) // 2])})
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]["message"]


def test_a_dataset_with_bad_media_is_a_400_naming_each_line(server) -> None:
    png = base64.b64decode(vlm.png(RED))
    good = server.client.post("/v1/files", files={"file": ("red.png", png)}).json()["name"]

    def line(part: dict) -> str:
        return json.dumps(
            {
                "contents": [
                    {"role": "user", "parts": [part, {"text": vlm.PROMPT}]},
                    {"role": "model", "parts": [{"text": "red"}]},
                ]
            }
        )

    rows = [
        line({"fileData": {"mimeType": "image/png", "fileUri": good}}),
        line({"fileData": {"mimeType": "image/png", "fileUri": "files/20260101000000aaaaaaaaaaaa"}}),
        line({"inlineData": {"mimeType": "image/png", "data": base64.b64encode(jpeg(RED)).decode()}}),
    ]
    response = server.client.post(
        "/v1/files", files={"file": ("train.jsonl", "\n".join(rows) + "\n")}, data={"model": "vlm"}
    )
    assert response.status_code == 400, response.text
    violations = response.json()["error"]["details"][0]["fieldViolations"]
    lines = {v.get("line") for v in violations}
    message = response.json()["error"]["message"]
    assert lines == {2, 3}, violations
    assert "not found" in message and "image/jpeg" in message


def test_a_tuning_job_trains_on_uploaded_images_named_by_file_id(server) -> None:
    """Uploaded images by ``files/{id}`` (deleted once the job is created) and one under the data root."""
    uploads = {}
    for label, rgb in (("red", RED), ("blue", (30, 40, 220))):
        response = server.client.post("/v1/files", files={"file": (f"{label}.png", base64.b64decode(vlm.png(rgb)))})
        uploads[label] = response.json()["name"]
    rows = [
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [{"fileData": {"mimeType": "image/png", "fileUri": uri}}, {"text": vlm.PROMPT}],
                },
                {"role": "model", "parts": [{"text": label}]},
            ]
        }
        for label, uri in [*uploads.items(), ("green", "img/green.png")]  # and a path under the data root
    ] * 2
    (server.data_root / "img").mkdir(exist_ok=True)
    (server.data_root / "img" / "green.png").write_bytes(base64.b64decode(vlm.png((30, 200, 40))))
    dataset = server.client.post(
        "/v1/files", files={"file": ("train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))}, data={"model": "vlm"}
    )
    assert dataset.status_code == 201, dataset.text
    body = {
        "baseModel": "vlm",
        "tuningMode": "FULL",
        "supervisedTuningSpec": {
            "trainingDatasetUri": dataset.json()["name"],
            "hyperParameters": {"epochCount": 1, "batchSize": 2},
        },
    }
    created = server.client.post("/v1/tuningJobs", json=body)
    assert created.status_code == 201, created.text
    for uri in uploads.values():  # the job keeps its own links: deleting the uploads cannot break it
        assert server.client.delete(f"/v1/{uri}").status_code == 200
    job = server.wait_job(created.json()["name"], timeout=120)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job.get("error")
    assert job["tuningDataStats"]["supervisedTuningDataStats"]["tuningDatasetExampleCount"] == 6
    tuned = job["tunedModel"]["model"].removeprefix("models/")
    assert generate(server, tuned, turn(inline(RED)))["usageMetadata"]["promptTokenCount"] > 6


def test_a_catalog_vlm_id_is_served_from_local_weights(server) -> None:
    answer = generate(server, CATALOG_VLM, turn(inline(RED)))
    assert answer["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS")
    assert answer["modelVersion"] == CATALOG_VLM
    count = server.client.post(f"/v1/models/{CATALOG_VLM}:countTokens", json=turn(inline(RED))).json()
    text_only = server.client.post(f"/v1/models/{CATALOG_VLM}:countTokens", json=turn()).json()
    assert count["totalTokens"] > text_only["totalTokens"] + 4  # the image's tokens, counted by its processor
    assert answer["usageMetadata"]["promptTokenCount"] == count["totalTokens"]


def test_a_tuned_vlm_adapter_is_served_on_its_base(server, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from tunery.models.loading import load_processor
    from tunery.serving.gemini import parse_generate_request
    from tunery.serving.multimodal import VisionLanguageModel
    from tunery.tuning import TuningSpec, tune

    train = vlm.write_rows(tmp_path / "train.jsonl", [("red", RED), ("blue", (30, 40, 220))] * 2)
    base = server.data_root / "vlm"
    spec = TuningSpec(
        train=str(train),
        base_model=str(base),
        method="PEFT_ADAPTER",
        epochs=2,
        batch_size=2,
        learning_rate_multiplier=50,
        adapter_size=4,
        output=str(tmp_path / "tuned"),
        device="cpu",
    )
    tuned = Path(tune(spec))
    record = TunedModel(new_id(), "default", new_id(), "lora", str(base), "PEFT_ADAPTER", str(tuned), now())
    server.store.add_tuned_model(record)
    answer = generate(server, record.id, turn(inline(RED)))

    request = parse_generate_request({**turn(inline(RED)), "generationConfig": {"maxOutputTokens": 4}})
    merged = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), tuned).merge_and_unload()
    direct = VisionLanguageModel(tuned, model=merged, processor=load_processor(tuned)).generate(*request)
    untuned = VisionLanguageModel(base).generate(*request)
    assert direct.text != untuned.text, "the adapter changes the answer: the check below tells them apart"
    assert answer["candidates"][0]["content"]["parts"][0]["text"] == direct.text
    assert answer["usageMetadata"]["promptTokenCount"] == direct.prompt_tokens


def test_a_text_model_takes_an_uploaded_pdf_as_its_text(server, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunery.data.documents import text_example
    from tunery.data.tokenize import prompt_ids
    from tunery.models.loading import load_tokenizer
    from tunery.serving.gemini import parse_count_tokens_request

    monkeypatch.syspath_prepend(str(TESTS / "unit"))  # test_pdf_parts imports its neighbours by name
    pdf = by_path("_pdf_parts", TESTS / "unit" / "test_pdf_parts.py").make_pdf(["alpha red page one", "beta green"])
    uploaded = server.client.post("/v1/files", files={"file": ("doc.pdf", pdf)}).json()
    assert uploaded["mimeType"] == "application/pdf" and uploaded["supervisedTuningDataStats"]["pages"] == 2
    record = TunedModel(new_id(), "default", new_id(), "tiny", "tiny", "FULL", str(server.data_root / "tiny"), now())
    server.store.add_tuned_model(record)  # the tiny text model
    body = turn({"fileData": {"mimeType": "application/pdf", "fileUri": uploaded["name"]}})
    counted = server.client.post(f"/v1/models/{record.id}:countTokens", json=body)
    assert counted.status_code == 200, counted.text
    inline = turn({"inlineData": {"mimeType": "application/pdf", "data": base64.b64encode(pdf).decode()}})
    expected = prompt_ids(load_tokenizer(server.data_root / "tiny"), parse_count_tokens_request(inline))
    assert counted.json()["totalTokens"] == len(expected)
    assert "alpha red page one" in text_example(parse_count_tokens_request(inline), None).messages()[0]["content"]
    assert generate(server, record.id, body)["usageMetadata"]["promptTokenCount"] == len(expected)
