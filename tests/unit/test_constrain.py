"""Controlled output on a tiny model: every constrained answer parses and matches its schema.

.venv/bin/python -m pytest tests/unit/test_constrain.py -q
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunery.data import user_example
from tunery.errors import DatasetError
from tunery.serving import Engine
from tunery.serving.constrain import compile_constraint, schema_problems
from tunery.serving.gemini import generation_config

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
WORDS = st.text(alphabet='abcdefghij klmnop-_.ÄéЖ"\\', min_size=1, max_size=12)


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    number = st.fixed_dictionaries(
        {"type": st.sampled_from(["INTEGER", "NUMBER", "integer", "number"])},
        optional={"minimum": st.integers(-50, 0), "maximum": st.integers(1, 5000), "nullable": st.booleans()},
    )
    string = st.fixed_dictionaries(
        {"type": st.sampled_from(["STRING", "string"])},
        optional={"maxLength": st.integers(1, 30), "description": WORDS, "nullable": st.booleans()},
    )
    enum = st.fixed_dictionaries(
        {"type": st.just("STRING"), "enum": st.lists(WORDS, min_size=1, max_size=5, unique=True)},
        optional={"format": st.just("enum")},
    )
    return st.one_of(number, string, enum, st.just({"type": "BOOLEAN"}))


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    array = st.fixed_dictionaries(
        {"type": st.just("ARRAY"), "items": children},
        optional={"minItems": st.integers(0, 2), "maxItems": st.integers(2, 4)},
    )

    @st.composite
    def obj(draw: Any) -> dict[str, Any]:
        properties = draw(st.dictionaries(NAMES, children, min_size=1, max_size=4))
        names = list(properties)
        schema: dict[str, Any] = {"type": "OBJECT", "properties": properties}
        schema["required"] = draw(st.lists(st.sampled_from(names), unique=True))
        if draw(st.booleans()):
            schema["propertyOrdering"] = draw(st.permutations(names))
        return schema

    return st.one_of(array, obj())


SCHEMAS = st.recursive(_leaf(), _extend, max_leaves=8).filter(lambda s: s["type"] in ("OBJECT", "ARRAY"))


def matches(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value`` is what a Gemini ``responseSchema`` describes (its OpenAPI meaning, read directly)."""
    if value is None:
        return bool(schema.get("nullable"))
    kind = schema.get("type", "STRING").upper()
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if kind in ("INTEGER", "NUMBER"):
        ok = isinstance(value, int) if kind == "INTEGER" else isinstance(value, int | float)
        return (
            ok and not isinstance(value, bool) and schema.get("minimum", value) <= value <= schema.get("maximum", value)
        )
    if kind == "STRING":
        return (
            isinstance(value, str)
            and value in schema.get("enum", [value])
            and len(value) <= schema.get("maxLength", len(value))
        )
    if kind == "ARRAY":
        return (
            isinstance(value, list)
            and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
            and all(matches(v, schema["items"]) for v in value)
        )
    properties = schema["properties"]
    return (
        isinstance(value, dict)
        and set(value) <= set(properties)
        and set(schema.get("required", [])) <= set(value)
        and all(matches(v, properties[k]) for k, v in value.items())
    )


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model)


def _config(generation: dict[str, Any]):
    return generation_config(generation)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS)
def test_fuzzed_schemas_always_parse_and_match(engine, schema):
    assert schema_problems(schema, "responseSchema") == []
    config = _config({"responseMimeType": "application/json", "responseSchema": schema, "maxOutputTokens": 160})
    generation = engine.generate(user_example("hello world"), config)
    assert generation.finish_reason == "STOP", (generation.text, schema)
    value = json.loads(generation.text)  # parses, always
    assert matches(value, schema), (generation.text, schema)
    assert generation.output_tokens <= 160


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS, seed=st.integers(0, 2**16))
def test_any_walk_through_the_masks_completes(tiny_tokenizer, schema, seed):
    """The interface the decode loop uses: any token the mask allows, chosen at random, ends in a valid answer."""
    tokenizer = tiny_tokenizer()
    config = _config({"responseMimeType": "application/json", "responseSchema": schema, "maxOutputTokens": 200})
    constraint = compile_constraint(config, tokenizer)
    rng, tokens = random.Random(seed), []
    for _ in range(200):
        allowed = constraint.mask(len(tokenizer)).nonzero().flatten().tolist()
        token = rng.choice(allowed)
        constraint.advance(token)
        if token in constraint.vocabulary.stops:
            break
        tokens.append(token)
    assert constraint.is_finished()
    text = tokenizer.decode(tokens)
    assert matches(json.loads(text), schema), (text, schema)


def test_enum_answers_are_one_of_the_values(engine):
    values = ["card_arrival", "declined", "transfer failed", 'Ä"quoted"']
    config = _config({"responseMimeType": "text/x.enum", "responseSchema": {"type": "STRING", "enum": values}})
    for text in ("hello", "my card never arrived", "money transfer"):
        assert engine.generate(user_example(text), config).text in values


def test_a_small_budget_still_closes_the_answer(engine):
    schema = {
        "type": "OBJECT",
        "properties": {"summary": {"type": "STRING"}, "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
                       "n": {"type": "INTEGER"}},
        "required": ["summary", "tags", "n"],
    }  # fmt: skip
    for budget in (28, 40, 60):
        config = _config({"responseMimeType": "application/json", "responseSchema": schema, "maxOutputTokens": budget})
        generation = engine.generate(user_example("hello"), config)
        assert matches(json.loads(generation.text), schema)
        assert generation.output_tokens <= budget and generation.finish_reason == "STOP"


def test_constrained_and_free_rows_in_one_batch_equal_each_alone(engine):
    json_config = _config({"responseMimeType": "application/json", "maxOutputTokens": 24,
                           "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "BOOLEAN"}}}})  # fmt: skip
    enum_config = _config({"responseMimeType": "text/x.enum", "responseSchema": {"enum": ["yes", "no"]}})
    free = _config({"maxOutputTokens": 12})
    prompts = [engine.prompt(user_example(t), free) for t in ("hello", "good morning today", "why")]
    configs = [json_config, free, enum_config]
    together = engine.generate_batch(prompts, configs)
    alone = [engine.generate_batch([p], [c])[0] for p, c in zip(prompts, configs)]
    assert [g.text for g in together] == [g.text for g in alone]
    assert json.loads(together[0].text).keys() <= {"a"} and together[2].text in ("yes", "no")


@pytest.mark.parametrize(
    ("generation", "field"),
    [
        ({"responseMimeType": "text/csv"}, "generationConfig.responseMimeType"),
        ({"responseSchema": {"type": "STRING"}}, "generationConfig.responseMimeType"),
        ({"responseMimeType": "text/x.enum"}, "generationConfig.responseSchema"),
        ({"responseMimeType": "application/json", "responseSchema": {"type": "DATE"}},
         "generationConfig.responseSchema.type"),
        ({"responseMimeType": "application/json", "responseSchema": {"type": "OBJECT", "properties": {"a": {}}}},
         "generationConfig.responseSchema.properties.a.type"),
        ({"responseMimeType": "application/json",
          "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "required": ["b"]}},
         "generationConfig.responseSchema.required"),
        ({"responseMimeType": "application/json", "responseSchema": {"type": "INTEGER", "enum": ["1"]}},
         "generationConfig.responseSchema.enum"),
        ({"responseMimeType": "application/json", "responseSchema": {"type": "ARRAY"}},
         "generationConfig.responseSchema.items"),
        ({"responseMimeType": "application/json", "responseSchema": {"type": "STRING", "pattern": "a+"}},
         "generationConfig.responseSchema.pattern"),
        ({"responseMimeType": "application/json", "responseSchema": {"type": "NUMBER", "minimum": 5, "maximum": 1}},
         "generationConfig.responseSchema.minimum"),
    ],
)  # fmt: skip
def test_bad_controlled_output_fields_are_named(generation, field):
    with pytest.raises(DatasetError) as caught:
        generation_config(generation)
    assert field in [p.field for p in caught.value.problems]


# --- evaluation: --constrain and the task of a many-label file ----------------------------------------------


def _intent_rows(n_labels: int, per_label: int, offset: int = 0) -> list[dict[str, Any]]:
    return [
        {"contents": [{"role": "user", "parts": [{"text": f"question {offset + i} about intent {k}"}]},
                      {"role": "model", "parts": [{"text": f"intent_{k}"}]}]}
        for k in range(n_labels)
        for i in range(per_label)
    ]  # fmt: skip


def test_auto_task_is_classification_for_any_closed_set_the_training_file_covers(tmp_path):
    def write_jsonl(path, rows):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    from tunery.evaluation.compare import read_evaluation_data
    from tunery.evaluation.tasks import resolve_task, training_labels

    train = write_jsonl(tmp_path / "train.jsonl", _intent_rows(77, 10))
    evaluation = read_evaluation_data(write_jsonl(tmp_path / "eval.jsonl", _intent_rows(77, 1, offset=100)))
    from tunery.data.validation import read_examples

    assert resolve_task("auto", evaluation).kind == "generation"  # 77 labels and nothing to say they are closed
    task = resolve_task("auto", evaluation, read_examples(train).examples)
    assert task.kind == "classification" and len(task.labels) == 77
    assert resolve_task("auto", evaluation, known_labels=training_labels(train)).kind == "classification"
    # free text answers (each seen once) are no closed set
    free = write_jsonl(tmp_path / "free.jsonl", _intent_rows(77, 1, offset=500))
    assert training_labels(free) is None


def test_a_tuned_classifier_records_its_labels(tuned_lora, classify_train):
    from tunery.data.validation import read_examples
    from tunery.models.tuned import read_manifest

    expected = sorted({e.target.strip() for e in read_examples(classify_train).examples})
    assert read_manifest(tuned_lora)["labels"] == expected


def test_evaluate_with_constrained_answers(tiny_model, classify_train, data_dir, tmp_path):
    from tunery.evaluation.compare import Candidate, Options, compare_models

    data = data_dir / "classify_openai.jsonl"
    run = compare_models(data, [Candidate("base", str(tiny_model))], Options(train=str(classify_train),
                         constrain="labels", advice=False))  # fmt: skip
    evaluation = run.evaluations[0]
    assert run.task.kind == "classification"
    assert all(p.output in run.task.labels and p.label == p.output for p in evaluation.predictions)
    schema = {"type": "OBJECT", "properties": {"label": {"type": "STRING", "enum": list(run.task.labels)}},
              "required": ["label"]}  # fmt: skip
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    options = Options(task="generation", constrain=f"schema={tmp_path / 'schema.json'}", max_output_tokens=40)
    evaluation = compare_models(data, [Candidate("base", str(tiny_model))], options).evaluations[0]
    assert all(matches(json.loads(p.output), schema) for p in evaluation.predictions)
    with pytest.raises(Exception, match="classification"):
        compare_models(data, [Candidate("base", str(tiny_model))], Options(task="generation", constrain="labels"))
