"""Serving a vision-language model (#15): a tiny Qwen2-VL (random weights, built from a config by the shared
builder in test_vlm_tuning) saved to a directory, called through ``GenerativeModel.generate_content``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")
import test_vlm_tuning as vlm  # the VLM builders shared with the tuning tests (same folder)

from tunery.data.formats import Example, Part, Turn
from tunery.errors import DatasetError
from tunery.sdk.generative import GenerativeModel
from tunery.serving.multimodal import VisionLanguageModel, is_vision_language


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, processor = vlm.qwen2_vl()
    path = tmp_path_factory.mktemp("qwen2-vl")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_generate_content_with_an_image_equals_model_generate(vlm_dir: Path) -> None:
    assert is_vision_language(vlm_dir)
    contents = [
        {
            "role": "user",
            "parts": [{"inlineData": {"mimeType": "image/png", "data": vlm.png((220, 30, 30))}}, {"text": vlm.PROMPT}],
        }
    ]
    answer = GenerativeModel(vlm_dir).generate_content(contents, {"maxOutputTokens": 8})

    served = VisionLanguageModel(vlm_dir)
    example = Example(turns=(Turn("user", (vlm.image_part((220, 30, 30)), Part("text", text=vlm.PROMPT))),))
    inputs = served.inputs(example)
    assert "pixel_values" in inputs
    with torch.inference_mode():
        out = served.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = served.tokenizer.eos_token_id
    new = new[: new.index(eos) + 1] if eos in new else new
    assert answer.text == served.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert answer.usage_metadata.candidates_token_count == len(new)
    assert answer.usage_metadata.prompt_token_count == inputs["input_ids"].shape[1]


def test_generate_content_reads_a_file_path_against_the_working_directory(
    vlm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(base64.b64decode(vlm.png((220, 30, 30))))
    monkeypatch.chdir(tmp_path)
    model = GenerativeModel(vlm_dir)
    by_path = {"fileData": {"mimeType": "image/png", "fileUri": "img/red.png"}}
    inline = {"inlineData": {"mimeType": "image/png", "data": vlm.png((220, 30, 30))}}
    answers = [
        model.generate_content([{"role": "user", "parts": [part, {"text": vlm.PROMPT}]}], {"maxOutputTokens": 6})
        for part in (by_path, inline)
    ]
    assert answers[0].text == answers[1].text
    assert answers[0].usage_metadata.prompt_token_count == answers[1].usage_metadata.prompt_token_count
    outside = {"fileData": {"mimeType": "image/png", "fileUri": "../elsewhere.png"}}
    with pytest.raises(DatasetError, match=r"contents\[0\]\.parts\[0\]\.fileData: '\.\.' is not allowed"):
        model.generate_content([{"role": "user", "parts": [outside, {"text": vlm.PROMPT}]}])


def test_count_tokens_counts_the_image(vlm_dir: Path) -> None:
    model = GenerativeModel(vlm_dir)
    text_only = [{"role": "user", "parts": [{"text": vlm.PROMPT}]}]
    image = {"inlineData": {"mimeType": "image/png", "data": vlm.png((30, 40, 220))}}
    with_image = [{"role": "user", "parts": [image, {"text": vlm.PROMPT}]}]
    # a 32x32 image, 8-pixel patches merged 2x2: 4 image pad tokens plus the vision start and end markers
    assert model.count_tokens(with_image) == model.count_tokens(text_only) + 6


def _host_call(message: dict) -> dict:
    import json
    import threading

    from tunery.serving.host import Host

    replies: list[dict] = []
    got = threading.Event()
    host = Host(lambda reply: (replies.append(reply), got.set()))
    host.handle_line(json.dumps({"id": 1, **message}))
    assert got.wait(60)
    return replies[0]


def test_model_host_serves_an_image_request_and_a_text_model_refuses_it(vlm_dir: Path) -> None:
    from tunery.models.catalog import DEFAULT_MODEL

    image = {"inlineData": {"mimeType": "image/png", "data": vlm.png((30, 200, 40))}}
    body = {
        "contents": [{"role": "user", "parts": [image, {"text": vlm.PROMPT}]}],
        "generationConfig": {"maxOutputTokens": 4},
    }
    answer = _host_call({"op": "generate", "model": str(vlm_dir), "request": body})
    assert answer["ok"], answer
    assert answer["result"]["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS")
    assert answer["result"]["usageMetadata"]["promptTokenCount"] > 6

    refused = _host_call({"op": "generate", "model": DEFAULT_MODEL, "request": body})
    assert refused["error"]["code"] == 400
    assert DEFAULT_MODEL in json.dumps(refused["error"]) and "text only" in json.dumps(refused["error"])


def test_a_streamed_image_request_ends_with_the_whole_answer(vlm_dir: Path) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": vlm.PROMPT}]}], "generationConfig": {"maxOutputTokens": 4}}
    plain = _host_call({"op": "generate", "model": str(vlm_dir), "request": body})
    streamed = _host_call({"op": "generate", "model": str(vlm_dir), "request": body, "stream": True})
    assert streamed["ok"], streamed
    assert streamed["result"]["candidates"][0]["content"] == plain["result"]["candidates"][0]["content"]
