"""Load a tokenizer and a causal LM (or a processor and a vision-language or audio-language model) from a
directory: safetensors only, never remote code."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from tunery.errors import ModelError
from tunery.models.templates import CHATML


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {exc}") from exc
    if not tokenizer.is_fast:
        raise ModelError(
            f"{path}: tunery needs a fast (Rust) tokenizer for loss masks; found {type(tokenizer).__name__}"
        )
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _config(path: str | Path) -> dict[str, Any]:
    config = Path(path) / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def is_audio_language(path: str | Path) -> bool:
    """Whether the model directory's ``config.json`` is an audio-language model's (an ``audio_config``, no
    ``vision_config``: Qwen2-Audio)."""
    config = _config(path)
    return "audio_config" in config and "vision_config" not in config


def is_multimodal(path: str | Path) -> bool:
    """Whether the model directory's ``config.json`` is a vision-language model's (it has a ``vision_config``) or
    an audio-language model's (an ``audio_config``): one loaded with its processor."""
    config = _config(path)
    return "vision_config" in config or "audio_config" in config


def load_processor(path: str | Path) -> Any:
    """The processor (image processor or audio feature extractor, tokenizer, chat template) of a multimodal model
    directory; no remote code. Without torchvision, a processor that declares a video processor is loaded for
    images only."""
    import transformers

    name = ""
    for file in ("processor_config.json", "preprocessor_config.json"):
        if (Path(path) / file).is_file():
            name = name or json.loads((Path(path) / file).read_text()).get("processor_class", "")
    try:
        if name and hasattr(transformers, name):
            processor = processor_class(getattr(transformers, name)).from_pretrained(str(path))
        else:
            processor = transformers.AutoProcessor.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load a processor from {path}: {exc}") from exc
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not getattr(processor, "chat_template", None):
        raise ModelError(f"{path}: the processor has no tokenizer or no chat template; tunery needs both to train")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def load_model(path: str | Path, dtype: Any = None, **options: Any) -> Any:
    """A causal LM from ``path`` (fp32 unless ``dtype``), or for a vision-language config, an image-text-to-text
    model, or for an audio-language config, a multimodal LM (Qwen2AudioForConditionalGeneration); ``options`` go
    to ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    auto: Any = AutoModelForCausalLM
    if is_audio_language(path):
        auto = AutoModelForMultimodalLM
    elif is_multimodal(path):
        auto = AutoModelForImageTextToText
    try:
        model = auto.from_pretrained(
            str(path), dtype=dtype or torch.float32, trust_remote_code=False, use_safetensors=True, **options
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a model from {path}: {exc}") from exc
    return model


def video_processors_available() -> bool:
    """Whether transformers can build video processors here (they need torchvision; images need only PIL)."""
    import transformers

    try:
        return hasattr(transformers, "VideoProcessorMixin") and importlib.util.find_spec("torchvision") is not None
    except (ImportError, ValueError):
        return False


def processor_class(cls: Any) -> Any:
    """``cls`` (a processor class), or without torchvision, the same class without its video processor.

    transformers 5 refuses to build a processor that declares a video processor (Qwen2-VL's) unless torchvision is
    installed, even for images alone; the images-only subclass takes the image processor and tokenizer only.
    """
    import inspect

    if "video_processor" not in inspect.signature(cls.__init__).parameters or video_processors_available():
        return cls

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any):
        cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kw)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})
