"""Find a base model's weights: a catalog id (converted once from its GGUF) or a local HF directory."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.errors import ModelError
from tunery.models.catalog import CATALOG, LOCAL_LEARNING_RATES, CatalogEntry
from tunery.settings import models_cache

SOURCE_FILE = "tunery-source.json"


@dataclass(frozen=True)
class BaseModel:
    """A base model ready to load: a safetensors directory with tokenizer and chat template."""

    id: str
    path: Path
    modalities: tuple[str, ...]
    context_length: int
    learning_rates: dict[str, float]
    sha256: str | None = None


def resolve_base(name: str | Path) -> BaseModel:
    """A catalog id (converted on first use) or the path of a local Hugging Face model directory."""
    if str(name) in CATALOG:
        entry = CATALOG[str(name)]
        path = ensure_converted(entry)
        source = json.loads((path / SOURCE_FILE).read_text())
        return BaseModel(entry.id, path, entry.modalities, entry.context_length, entry.learning_rates, source["sha256"])
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        context = int(config.get("max_position_embeddings") or 2048)
        return BaseModel(str(path.resolve()), path.resolve(), ("text",), context, dict(LOCAL_LEARNING_RATES))
    known = ", ".join(CATALOG)
    raise ModelError(
        f"unknown base model {str(name)!r}: not a catalog id ({known}) nor a model directory with config.json"
    )


def cached_path(entry: CatalogEntry) -> Path:
    return models_cache() / entry.id


def ensure_converted(entry: CatalogEntry) -> Path:
    """Convert the entry's GGUF into ``$TUNERY_HOME/models/<id>`` once; later calls return the cache."""
    target = cached_path(entry)
    if (target / SOURCE_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{entry.id}.lock"):
        if (target / SOURCE_FILE).is_file():  # another process converted it while we waited
            return target
        assert entry.gguf is not None
        gguf = entry.gguf()
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.id}-", dir=target.parent))
        try:
            convert_gguf(gguf, staging, entry.chat_template, name_or_path=str(target))
            (staging / SOURCE_FILE).write_text(
                json.dumps(
                    {"id": entry.id, "source": entry.source, "gguf": gguf.name, "sha256": sha256_file(gguf)}, indent=2
                )
            )
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if gguf.is_relative_to(models_cache()):  # a GGUF we assembled only to convert it
            gguf.unlink(missing_ok=True)
    return target


def convert_gguf(gguf: Path, output: Path, chat_template: str, name_or_path: str) -> None:
    """Dequantize a GGUF into a float32 safetensors directory with its tokenizer and ``chat_template``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model keeps its gguf quantizer; detach it so the saved config is a plain model.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.config.__dict__.pop("quantization_config", None)
    model.config._name_or_path = name_or_path
    tokenizer.chat_template = chat_template
    _set_stop_tokens(model, tokenizer)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)


def _set_stop_tokens(model: Any, tokenizer: Any) -> None:
    """Generation stops at end-of-sequence and at the template's end-of-turn token."""
    from tunery.data.tokenize import end_of_turn_token

    stop = [tokenizer.eos_token_id]
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        stop.append(tokenizer.convert_tokens_to_ids(eot))
    model.generation_config.eos_token_id = sorted({s for s in stop if s is not None})
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _lock(path: Path):
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
