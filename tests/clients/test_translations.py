"""The edge translations on their own (no server): Gemini request forms, Vertex proto forms, OpenAI bodies.

.venv/bin/python -m pytest tests/clients/test_translations.py -q
"""

from __future__ import annotations

import pytest

from tunery.api.errors import ApiError
from tunery.api.routes import vertex
from tunery.errors import DatasetError
from tunery.serving import gemini
from tunery.serving import openai as wire

TURN = {"parts": [{"text": "hi"}]}


def problems(body: dict) -> dict[str, str]:
    with pytest.raises(DatasetError) as caught:
        gemini.parse_generate_request(body)
    return {p.field: p.message for p in caught.value.problems}


def test_snake_case_and_camel_case_parse_alike() -> None:
    snake = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "system_instruction": {"role": "system", "parts": [{"text": "Be brief."}]},
        "generation_config": {"max_output_tokens": 5, "top_p": 0.5, "stop_sequences": ["x"]},
    }
    camel = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 5, "topP": 0.5, "stopSequences": ["x"]},
    }
    assert gemini.parse_generate_request(snake) == gemini.parse_generate_request(camel)


def test_fields_that_change_nothing_are_accepted() -> None:
    body = {
        "contents": [TURN],
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "labels": {"team": "risk"},
        "tools": [],
        "generationConfig": {"presencePenalty": 0, "frequency_penalty": 0, "responseModalities": ["TEXT"]},
    }
    _, config = gemini.parse_generate_request(body)
    assert config == gemini.parse_generate_request({"contents": [TURN]})[1]


def test_fields_that_would_change_the_answer_are_named() -> None:
    found = problems(
        {
            "contents": [TURN],
            "tools": [{"functionDeclarations": [{"name": "f"}]}],
            "cached_content": "cachedContents/abc",
            "generationConfig": {"candidateCount": 2, "presencePenalty": 0.5, "logprobs": 3},
        }
    )
    assert set(found) == {
        "tools",
        "cachedContent",
        "generationConfig.candidateCount",
        "generationConfig.presencePenalty",
        "generationConfig.logprobs",  # top log probabilities without responseLogprobs
    }
    assert "not supported" in found["tools"]
    assert problems({"contents": [TURN], "systemInstruction": "a", "system_instruction": "b"}) == {
        "systemInstruction": "given twice (as systemInstruction and system_instruction)"
    }


@pytest.mark.parametrize(
    ("sent", "rank"),
    [
        ("ADAPTER_SIZE_SIXTEEN", 16),
        (4, 16),
        ("ADAPTER_SIZE_TWO", 2),
        (6, 2),
        (1, 1),
        (5, 32),
        ("ADAPTER_SIZE_UNSPECIFIED", None),
    ],
)
def test_adapter_size_names_and_codes(sent, rank) -> None:
    body = vertex.VertexCreateTuningJobRequest.model_validate(
        {"supervisedTuningSpec": {"trainingDatasetUri": "x.jsonl", "hyperParameters": {"adapterSize": sent}}}
    )
    assert vertex.native_body(body)["supervisedTuningSpec"]["hyperParameters"].get("adapterSize") == rank


@pytest.mark.parametrize("sent", ["ADAPTER_SIZE_SIXTY_FOUR", 7, 16, "16"])
def test_an_unknown_adapter_size_is_never_another_rank(sent) -> None:
    body = vertex.VertexCreateTuningJobRequest.model_validate(
        {"supervisedTuningSpec": {"trainingDatasetUri": "x.jsonl", "hyperParameters": {"adapterSize": sent}}}
    )
    with pytest.raises(ApiError) as caught:
        vertex.native_body(body)
    assert caught.value.status_code == 400 and "adapterSize" in str(caught.value.detail)


def test_vertex_counts_as_strings_and_tuning_mode_in_the_spec() -> None:
    body = vertex.VertexCreateTuningJobRequest.model_validate(
        {
            "baseModel": "publishers/google/models/tiny",
            "supervised_tuning_spec": {
                "training_dataset_uri": "x.jsonl",
                "hyper_parameters": {"epoch_count": "3", "learning_rate_multiplier": "2.5"},
                "tuning_mode": "TUNING_MODE_FULL",
            },
        }
    )
    native = vertex.native_body(body)
    assert native == {
        "baseModel": "tiny",
        "tuningMode": "FULL",
        "supervisedTuningSpec": {
            "trainingDatasetUri": "x.jsonl",
            "hyperParameters": {"epochCount": 3, "learningRateMultiplier": 2.5},
        },
    }


def test_openai_chat_becomes_a_gemini_body() -> None:
    body = wire.ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Route the ticket."},
                {"role": "user", "content": [{"type": "text", "text": "my card"}]},
                {"role": "assistant", "content": "card_arrival"},
                {"role": "user", "content": "and now?"},
            ],
            "max_completion_tokens": 7,
            "stop": "\n",
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
        }
    )
    raw, origin = wire.chat_body(body)
    assert raw["systemInstruction"] == {"parts": [{"text": "Route the ticket."}]}
    assert [t["role"] for t in raw["contents"]] == ["user", "model", "user"] and origin == {0: 1, 1: 2, 2: 3}
    assert raw["generationConfig"] == {
        "maxOutputTokens": 7,
        "stopSequences": ["\n"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }


def test_openai_fields_tunery_cannot_honour_are_named() -> None:
    body = wire.ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "n": 3,
            "frequency_penalty": 1,
        }
    )
    with pytest.raises(DatasetError) as caught:
        wire.chat_body(body)
    fields = {p.field for p in caught.value.problems}
    assert fields == {"n", "frequency_penalty", "messages[0].content[0]"}
