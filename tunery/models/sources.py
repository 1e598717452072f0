"""Find a base model's weights: a catalog id (converted once from its GGUF, or from the Hub), a local Hugging Face
directory, or a Hugging Face Hub id ``org/name[@revision]``.

Hub models come through ``huggingface_hub`` into its cache (``$HF_HOME/hub``): safetensors weights only (a repo
that has only pickled weights is refused, naming them), never remote code, ``HF_TOKEN`` for gated models and
``HF_HUB_OFFLINE=1`` for the cache alone. The commit and each file's hash (the Hub's etag: sha256 for LFS
files) are recorded with the tuned model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
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
    revision: str | None = None  # the Hub commit, for a Hub model
    files: dict[str, str] | None = None  # file name → Hub etag (sha256 for LFS files), for a Hub model


def resolve_base(name: str | Path) -> BaseModel:
    """A catalog id (converted on first use) or the path of a local Hugging Face model directory."""
    if str(name) in CATALOG and CATALOG[str(name)].hub:
        return resolve_hub(CATALOG[str(name)].hub or "", CATALOG[str(name)])
    if str(name) in CATALOG:
        entry = CATALOG[str(name)]
        path = ensure_converted(entry)
        source = json.loads((path / SOURCE_FILE).read_text())
        return BaseModel(entry.id, path, entry.modalities, entry.context_length, entry.learning_rates, source["sha256"])
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        text = config.get("text_config") or {}
        context = int(config.get("max_position_embeddings") or text.get("max_position_embeddings") or 2048)
        modalities = ("text", "image") if "vision_config" in config else ("text",)  # a vision-language model
        if "audio_config" in config and "vision_config" not in config:  # an audio-language model (Qwen2-Audio)
            modalities = ("text", "audio")
        return BaseModel(str(path.resolve()), path.resolve(), modalities, context, dict(LOCAL_LEARNING_RATES))
    if is_hub_id(str(name)):
        return resolve_hub(str(name))
    known = ", ".join(CATALOG)
    raise ModelError(
        f"unknown base model {str(name)!r}: not a catalog id ({known}), a model directory with config.json, "
        "nor a Hugging Face Hub id (org/name[@revision])"
    )


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}(@[A-Za-z0-9._/-]{1,128})?$")
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken"]
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def is_hub_id(name: str) -> bool:
    """``org/name`` or ``org/name@revision`` (not a path: no leading ``.``, ``/`` or ``~``, no ``..``)."""
    return bool(HUB_ID.match(name)) and ".." not in name and not Path(name).expanduser().exists()


def hub_cache() -> Path:
    """The Hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub`` (read at each call, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser() / "hub"


def resolve_hub(name: str, entry: CatalogEntry | None = None) -> BaseModel:
    """Download (or, offline, find in the cache) ``org/name[@revision]``'s safetensors snapshot."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from tunery.settings import hf_offline

    repo, _, revision = name.partition("@")
    offline = hf_offline()
    token = os.environ.get("HF_TOKEN") or None
    if not offline:
        _refuse_pickled(repo, revision or None, token)
    try:
        snapshot = Path(
            snapshot_download(
                repo,
                revision=revision or None,
                cache_dir=hub_cache(),
                allow_patterns=HUB_FILES,
                local_files_only=offline,
                token=token,
            )
        )
    except LocalEntryNotFoundError as exc:
        where = f"the Hub cache {hub_cache()}" + (" (HF_HUB_OFFLINE is set)" if offline else "")
        raise ModelError(f"{name}: not in {where}: {exc}") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"{name}: cannot fetch it from the Hugging Face Hub: {exc}") from exc
    names = [str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()]
    _refuse_unsafe(name, names)
    if not (snapshot / "config.json").is_file():
        raise ModelError(f"{name}: the snapshot has no config.json")
    config = json.loads((snapshot / "config.json").read_text())
    config = {**config, **config.get("text_config", {})}
    context = int(config.get("max_position_embeddings") or 2048)
    files = {n: Path(os.path.realpath(snapshot / n)).name for n in sorted(names)}
    return BaseModel(
        entry.id if entry else name,
        snapshot,
        entry.modalities if entry else ("text",),
        min(context, entry.context_length) if entry else context,
        dict(entry.learning_rates) if entry else dict(LOCAL_LEARNING_RATES),
        revision=snapshot.name,
        files=files,
    )


def _refuse_pickled(repo: str, revision: str | None, token: str | None) -> None:
    """Online: refuse a repo without safetensors before downloading anything, naming its weight files."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        files = HfApi(token=token).list_repo_files(repo, revision=revision)
    except HfHubHTTPError as exc:
        raise ModelError(f"{repo}: cannot read it on the Hugging Face Hub: {exc}") from exc
    _refuse_unsafe(repo, files)


def _refuse_unsafe(name: str, files: list[str]) -> None:
    if not any(f.endswith(".safetensors") for f in files):
        pickled = sorted(f for f in files if f.endswith(PICKLED))
        why = f"it has only pickled weights ({', '.join(pickled)})" if pickled else "it has no safetensors weights"
        raise ModelError(f"{name}: {why}; tunery loads safetensors only (pickle files can run code)")


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
