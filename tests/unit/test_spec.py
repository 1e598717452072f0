"""``TuningSpec``: bad values fail with a ConfigError naming the field and the value; aliases resolve.

.venv/bin/python -m pytest tests/unit/test_spec.py -q
"""

from __future__ import annotations

import math

import pytest

from tunery.errors import ConfigError, TuneryError
from tunery.models import FULL, PEFT_ADAPTER
from tunery.tuning import TuningSpec, default_epochs


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("adapter_size", 3, "adapterSize 3"),
        ("adapter_size", 64, "adapterSize 64"),
        ("epochs", 0, "epochCount 0"),
        ("epochs", 101, "epochCount 101"),
        ("learning_rate_multiplier", 0, "learningRateMultiplier 0"),
        ("learning_rate_multiplier", -1.5, "learningRateMultiplier -1.5"),
        ("learning_rate_multiplier", math.nan, "learningRateMultiplier nan"),
        ("batch_size", 0, "batchSize 0"),
        ("max_length", 8, "maxLength 8"),
        ("micro_batch_tokens", 0, "micro_batch_tokens 0"),
        ("method", "sgd", "method 'sgd'"),
        ("precision", "fp16", "precision 'fp16'"),
        ("train", "", "train: a training dataset is required"),
    ],
)
def test_bad_values_name_field_and_value(field, value, named):
    kwargs = {"train": "train.jsonl", field: value}
    with pytest.raises(ConfigError) as caught:
        TuningSpec(**kwargs)
    assert named in str(caught.value)
    assert isinstance(caught.value, TuneryError)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        TuningSpec(train="t.jsonl", adapter_size=3, epochs=0, learning_rate_multiplier=0, batch_size=0, method="x")
    message = str(caught.value)
    for named in ("adapterSize 3", "epochCount 0", "learningRateMultiplier 0", "batchSize 0", "method 'x'"):
        assert named in message


@pytest.mark.parametrize(
    ("alias", "method", "is_lora"),
    [
        ("lora", PEFT_ADAPTER, True),
        ("LoRA", PEFT_ADAPTER, True),
        ("PEFT_ADAPTER", PEFT_ADAPTER, True),
        ("peft_adapter", PEFT_ADAPTER, True),
        ("full", FULL, False),
        ("FULL", FULL, False),
    ],
)
def test_method_aliases(alias, method, is_lora):
    spec = TuningSpec(train="t.jsonl", method=alias)
    assert spec.method == method and spec.is_lora is is_lora


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16, 32])
def test_adapter_sizes(size):
    assert TuningSpec(train="t.jsonl", adapter_size=size).adapter_size == size


def test_defaults_and_round_trip():
    spec = TuningSpec(train="t.jsonl")
    assert (spec.method, spec.epochs, spec.adapter_size, spec.batch_size, spec.seed) == (PEFT_ADAPTER, None, None, 8, 0)
    assert TuningSpec.from_dict(spec.to_dict()) == spec
    edited = TuningSpec.from_dict({**spec.to_dict(), "method": "full", "epochs": 3})
    assert (edited.method, edited.epochs) == (FULL, 3)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown tuning spec field.*epochCount"):
        TuningSpec.from_dict({"train": "t.jsonl", "epochCount": 3})


@pytest.mark.parametrize(
    ("examples", "epochs"),
    [(0, 10), (1, 10), (10, 10), (100, 10), (101, 10), (150, 7), (200, 5), (499, 3), (500, 2), (10**6, 2)],
)
def test_default_epochs(examples, epochs):
    assert default_epochs(examples) == epochs
