"""The openai client, unmodified, with media (#15): ``chat.completions.create`` with an ``image_url`` data URL, and an
image uploaded by ``files.create(purpose="vision")`` sent as a ``file`` part, against a real ``tunery serve``.

The model is a tiny Qwen2-VL (random weights, built from a config by tests/unit/test_vlm_tuning.py's builder),
served as a fully tuned model of this module's tenant; its greedy answer through the OpenAI shape is the one the
native generateContent gives for the same image.

    .venv/bin/python -m pytest tests/clients/test_openai_media.py -x -q
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="openai is not installed (bash scripts/install.sh test)")
pytest.importorskip("PIL")

from tunery.jobs.store import TunedModel, new_id, now  # noqa: E402

BUILDERS = Path(__file__).resolve().parents[1] / "unit" / "test_vlm_tuning.py"
GREEN = (30, 200, 40)


def _builders():
    spec = importlib.util.spec_from_file_location("_vlm_builders", BUILDERS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vlm = _builders()


@pytest.fixture(scope="module")
def model(server, key) -> str:
    """The tiny VLM, under the server's data root, as a tuned model of this module's tenant."""
    path = server.data_root / "vlm-openai"
    built, processor = vlm.qwen2_vl()
    built.save_pretrained(path)
    processor.save_pretrained(path)
    record = TunedModel(new_id(), "clients-openai-media", new_id(), "vlm", "vlm", "FULL", str(path), now())
    server.store.add_tuned_model(record)
    return record.id


@pytest.fixture(scope="module")
def client(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def native(server, key, model: str) -> dict:
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": vlm.PROMPT}, {"inlineData": {"mimeType": "image/png", "data": vlm.png(GREEN)}}],
            }
        ],
        "generationConfig": {"maxOutputTokens": 4},
    }
    response = server.client.post(f"/v1/models/{model}:generateContent", json=body, headers=server.headers(key))
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_with_an_image_url_answers_as_generate_content_does(server, key, client, model: str) -> None:
    url = f"data:image/png;base64,{vlm.png(GREEN)}"
    completion = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": vlm.PROMPT}, {"type": "image_url", "image_url": {"url": url}}],
            }
        ],
        max_tokens=4,
    )
    expected = native(server, key, model)
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.choices[0].message.content == expected["candidates"][0]["content"]["parts"][0]["text"]
    assert completion.usage.prompt_tokens == expected["usageMetadata"]["promptTokenCount"]

    uploaded = client.files.create(file=("green.png", base64.b64decode(vlm.png(GREEN))), purpose="vision")
    assert uploaded.purpose == "vision" and uploaded.bytes > 0
    by_file = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": vlm.PROMPT}, {"type": "file", "file": {"file_id": uploaded.id}}],
            }
        ],
        max_tokens=4,
    )
    assert by_file.choices[0].message.content == completion.choices[0].message.content
    assert by_file.usage.prompt_tokens == completion.usage.prompt_tokens


def test_a_remote_image_url_is_refused_naming_the_part(client, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
            ],
        )
    assert "messages[0].content[0]" in str(caught.value) and "not fetched" in str(caught.value)


def test_media_the_server_refuses_is_named_by_message_and_content_part(client, model: str) -> None:
    from tunery.models.catalog import DEFAULT_MODEL

    unknown = {"type": "file", "file": {"file_id": "20260101000000aaaaaaaaaaaa"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, unknown]}]
        )
    assert "messages[0].content[1].fileData.fileUri" in str(caught.value) and "not found" in str(caught.value)
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{vlm.png(GREEN)}"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": [image]}],
        )
    (violation,) = caught.value.body["details"][0]["fieldViolations"]  # the error object the client parsed
    assert violation["field"] == "messages[1].content[0].inlineData" and DEFAULT_MODEL in violation["description"]
