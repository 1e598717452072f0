"""OpenAI chat content parts (#15) → Gemini parts: ``image_url`` data URLs, ``input_audio``, ``file``; each
problem named by ``messages[i].content[j]`` (``tunery.serving.openai.chat_parts``, used by /v1/chat/completions).

    .venv/bin/python -m pytest tests/unit/test_openai_media_parts.py -q
"""

from __future__ import annotations

import base64
import io
import wave

import pytest

from tunery.errors import DatasetError
from tunery.serving import openai as wire
from tunery.serving.openai import STORED_TYPE, chat_parts

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 40 + b"\xff\xd9").decode()


def wav() -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)
    return base64.b64encode(buffer.getvalue()).decode()


def parts(content: list | str) -> tuple[list | None, dict[str, str]]:
    problems: list[tuple[str, str]] = []
    found = chat_parts(content, "messages[2]", problems)
    return found, dict(problems)


def test_media_parts_become_inline_and_file_data() -> None:
    found, problems = parts(
        [
            {"type": "text", "text": "What colour "},
            {"type": "text", "text": "is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "auto"}},
            {"type": "input_audio", "input_audio": {"data": wav(), "format": "wav"}},
            {"type": "file", "file": {"file_id": "20261202133000abcdef012345"}},
            {"type": "file", "file": {"file_data": f"data:image/jpeg;base64,{JPEG}", "filename": "a.jpg"}},
        ]
    )
    assert problems == {}
    assert found == [  # one part per content part where there is media: errors name content[j] back
        {"text": "What colour "},
        {"text": "is this?"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"inlineData": {"mimeType": "audio/wav", "data": wav()}},
        {"fileData": {"mimeType": STORED_TYPE, "fileUri": "files/20261202133000abcdef012345"}},
        {"inlineData": {"mimeType": "image/jpeg", "data": JPEG}},
    ]
    assert parts("plain")[0] == [{"text": "plain"}]
    assert parts([{"type": "text", "text": "a "}, {"type": "text", "text": "b"}])[0] == [{"text": "a b"}]


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "remote URLs are not fetched"),
        (
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{JPEG}"}},
            "declared image/png but the bytes are image/jpeg",
        ),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, "not valid base64"),
        ({"type": "image_url", "image_url": {"url": f"data:audio/wav;base64,{PNG}"}}, "audio/wav is not an image type"),
        ({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}}, "only 'auto'"),
        ({"type": "input_audio", "input_audio": {"data": wav(), "format": "flac"}}, "expected 'wav' or 'mp3'"),
        (
            {"type": "input_audio", "input_audio": {"data": wav(), "format": "mp3"}},
            "declared audio/mpeg but the bytes are audio/wav",
        ),
        ({"type": "file", "file": {"file_id": "../etc/passwd"}}, "not a file id"),
        ({"type": "video_url", "video_url": {}}, "unsupported content part"),
    ],
)
def test_a_bad_part_is_named_by_message_and_part_index(part: dict, expected: str) -> None:
    found, problems = parts([{"type": "text", "text": "hi"}, part])
    assert found is None
    assert list(problems) == ["messages[2].content[1]"]
    assert expected in problems["messages[2].content[1]"]


def test_chat_completions_body_carries_the_parts_and_names_every_bad_one() -> None:
    body = wire.ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Name the colour."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {"type": "text", "text": "colour?"},
                    ],
                },
            ],
        }
    )
    raw, origin = wire.chat_body(body)
    assert raw["contents"] == [
        {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}, {"text": "colour?"}]}
    ]
    assert origin == {0: 1}
    wire.check(raw, origin)  # the Gemini parser takes the translated parts as they are

    bad = wire.ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
                {"role": "assistant", "content": "red"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "and"}, {"type": "input_audio", "input_audio": {}}],
                },
            ],
        }
    )
    with pytest.raises(DatasetError) as caught:
        wire.chat_body(bad)
    fields = {p.field for p in caught.value.problems}
    assert fields == {"messages[0].content[0]", "messages[2].content[1]"}


def test_errors_of_the_generation_path_are_named_by_the_chat_fields() -> None:
    from tunery.api.errors import invalid
    from tunery.api.translate import chat_error
    from tunery.serving.gemini import request_error
    from tunery.serving.openai import chat_field

    origin = {0: 1, 1: 3}
    assert chat_field("contents[1].parts[2].fileData.fileUri", origin) == "messages[3].content[2].fileData.fileUri"
    assert chat_field("contents[0].role", origin) == "messages[1].role"
    assert chat_field("generationConfig.topK", origin) == "generationConfig.topK"
    api = chat_error(invalid([("contents[1].parts[0].fileData.fileUri", "files/x not found")]), origin)
    assert api.details[0]["fieldViolations"][0]["field"] == "messages[3].content[0].fileData.fileUri"
    assert "messages[3].content[0]" in str(api.detail) and "contents[" not in str(api.detail)
    host = chat_error(
        request_error("generateContent request", [("contents[0].parts[1].inlineData", "text only")]), origin
    )
    assert isinstance(host, DatasetError) and host.problems[0].field == "messages[1].content[1].inlineData"
