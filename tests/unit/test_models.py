"""Base models in the unit tier: a local directory resolves without the catalog; nothing leaves the tmp home.

.venv/bin/python -m pytest tests/unit/test_models.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunery import settings
from tunery.errors import ModelError
from tunery.models import CATALOG, resolve_base
from tunery.models.catalog import LOCAL_LEARNING_RATES
from tunery.models.loading import load_tokenizer
from tunery.models.templates import CHATML, TEMPLATES


def test_tunery_home_is_the_session_tmp_dir(tunery_home, tmp_path_factory):
    assert settings.tunery_home() == tunery_home
    assert tunery_home.is_relative_to(tmp_path_factory.getbasetemp())
    assert settings.models_cache().parent == settings.tuned_models_dir().parent == tunery_home
    assert not settings.tunery_home().is_relative_to(Path.home() / ".tunery")


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_local_directory_resolves_as_a_base_model(tiny_model_factory, template):
    path = tiny_model_factory(template)
    base = resolve_base(str(path))
    assert (base.id, base.path) == (str(path.resolve()), path.resolve())
    assert base.modalities == ("text",) and base.context_length == 512 and base.sha256 is None
    assert base.learning_rates == LOCAL_LEARNING_RATES
    assert load_tokenizer(path).chat_template == TEMPLATES[template]


def test_unknown_base_model_names_the_catalog(tmp_path):
    with pytest.raises(ModelError) as caught:
        resolve_base(tmp_path / "no-model-here")
    for model_id in CATALOG:
        assert model_id in str(caught.value)


def test_tokenizer_without_a_template_gets_chatml_and_a_pad_token(tiny_model, tmp_path):
    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = None
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.chat_template == CHATML
    assert loaded.pad_token == loaded.eos_token == "<eos>"
