"""Controlled output on a real server: every response schema is enforced or refused up front with a 400 naming
the limit it crosses (enum size, nesting depth, schema size), never a 5xx and never a 200 outside the schema.

The model is the tiny model tuned with LoRA (``tuned_lora``), recorded for the test's tenant; answers are short
(``maxOutputTokens`` 24), so a constraint has to close its JSON within the budget.

    .venv/bin/python -m pytest tests/service/test_schema_limits.py -x -q
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunery.jobs.store import TunedModel, new_id, now
from tunery.serving.constrain import MAX_ENUM_VALUES, MAX_JSON_DEPTH, check_answer
from tunery.serving.gemini import parse_generate_request

PROMPT = [{"role": "user", "parts": [{"text": "answer"}]}]


@pytest.fixture
def served(service, tuned_lora):
    """A running server and the id of a tuned model it serves (the default tenant's)."""
    svc = service()
    path = svc.home / "tuned-models" / "schema-model"
    shutil.copytree(tuned_lora, path)
    model_id = new_id()
    record = TunedModel(model_id, "default", new_id(), "schemas", "tiny", "PEFT_ADAPTER", str(path), now())
    svc.store.add_tuned_model(record)
    return svc, model_id


def nested(depth: int, form: str, json_schema: bool = False) -> dict:
    """A schema ``depth`` schemas deep: objects in objects, arrays in arrays, or anyOf in anyOf (a string inside);
    ``json_schema``: written as JSON Schema (lower-case types), else as Gemini's responseSchema."""
    kind = str.lower if json_schema else str.upper
    schema: dict = {"type": kind("string")}
    for _ in range(depth - 1):
        if form == "object":
            schema = {"type": kind("object"), "properties": {"a": schema}, "required": ["a"]}
        elif form == "array":
            schema = {"type": kind("array"), "items": schema, "minItems": 1, "maxItems": 1}
        else:
            schema = {"anyOf": [schema]}
    return schema


def generate(svc, model_id: str, config: dict):
    body = {"contents": PROMPT, "generationConfig": {"maxOutputTokens": 24, **config}}
    return svc.client.post(f"/v1/models/{model_id}:generateContent", json=body, timeout=120)


def assert_enforced_or_refused(response, config: dict) -> None:
    assert response.status_code < 500, response.text
    if response.status_code == 400:
        assert response.json()["error"]["message"], response.text
        return
    assert response.status_code == 200, response.text
    candidate = response.json()["candidates"][0]
    text = candidate["content"]["parts"][0]["text"]
    _, parsed = parse_generate_request({"contents": PROMPT, "generationConfig": config})
    problem = check_answer(parsed, text)
    assert problem is None or candidate["finishReason"] == "MAX_TOKENS", (problem, text, config)


def test_schemas_past_a_limit_get_a_400_naming_it(served):
    svc, model_id = served
    labels = [f"label {i}" for i in range(10_000)]
    cases = [
        ({"responseMimeType": "text/x.enum", "responseSchema": {"type": "STRING", "enum": labels}}, "at most 1000"),
        ({"responseMimeType": "application/json", "responseSchema": {"type": "STRING", "enum": labels}}, "at most"),
        ({"responseMimeType": "application/json", "responseSchema": nested(150, "object")}, "nested deeper"),
        ({"responseMimeType": "application/json", "responseSchema": nested(400, "array")}, "nested deeper"),
        ({"responseMimeType": "application/json", "responseJsonSchema": nested(400, "object", True)}, "deeper"),
        ({"responseMimeType": "application/json", "responseSchema": nested(20, "object")}, "nested more than 16"),
    ]
    for config, said in cases:
        response = generate(svc, model_id, config)
        assert response.status_code == 400, (response.status_code, response.text[:300])
        assert said in response.text, response.text[:500]
    most = {"responseMimeType": "text/x.enum", "responseSchema": {"type": "STRING", "enum": labels[:MAX_ENUM_VALUES]}}
    response = generate(svc, model_id, most)
    assert response.status_code == 200, response.text[:300]
    assert_enforced_or_refused(response, most)
    assert "unexpected error" not in "".join(svc.output) and "Traceback" not in "".join(svc.output)


CASES = st.tuples(
    st.sampled_from([1, 2, 6, 16, 17, 20, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1])
    | st.integers(100, 400),
    st.sampled_from(["object", "array", "anyOf"]),
    st.one_of(st.integers(1, 3), st.integers(MAX_ENUM_VALUES - 2, MAX_ENUM_VALUES + 2), st.integers(1990, 12_000)),
    st.booleans(),
    st.sampled_from(["application/json", "text/x.enum"]),
)


def test_any_schema_at_the_extremes_is_enforced_or_refused(served):
    """Hypothesis: schemas 1 to 400 deep (objects, arrays, anyOf), enums of 1 to 12,000 values, as responseSchema
    or responseJsonSchema, JSON or enum: no 5xx, and a 200 is inside its schema."""
    svc, model_id = served
    statuses: list[int] = []

    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=CASES)
    def check(case) -> None:
        depth, form, width, json_form, mime = case
        json_form = json_form and mime != "text/x.enum"
        schema = nested(depth, form, json_form)
        labels = {"type": "string" if json_form else "STRING", "enum": [f"v{i}" for i in range(width)]}
        if mime == "text/x.enum":
            schema = labels
        elif width > 3:
            schema = {"type": "object" if json_form else "OBJECT", "properties": {"pick": labels, "deep": schema}}
        config = {"responseMimeType": mime, ("responseJsonSchema" if json_form else "responseSchema"): schema}
        response = generate(svc, model_id, config)
        statuses.append(response.status_code)
        assert_enforced_or_refused(response, config)

    check()
    assert {200, 400} <= set(statuses), statuses  # both enforced and refused schemas were tried
    assert "unexpected error" not in "".join(svc.output)
