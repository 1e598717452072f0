"""Load a tokenizer and a causal LM from a directory: safetensors only, never remote code."""

from __future__ import annotations

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


def load_model(path: str | Path, dtype: Any = None, **options: Any) -> Any:
    """A causal LM from ``path`` (fp32 unless ``dtype``); ``options`` go to ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype or torch.float32, trust_remote_code=False, use_safetensors=True, **options
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a model from {path}: {exc}") from exc
    return model
