"""Reading tuned model directories: their manifest, their base model, their weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunery.errors import ModelError
from tunery.models.catalog import CATALOG
from tunery.models.loading import load_model, load_tokenizer
from tunery.models.sources import resolve_base

MANIFEST_FILE = "tunery.json"
METRICS_FILE = "metrics.jsonl"


def is_tuned_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(tuned_dir: str | Path) -> dict[str, Any]:
    path = Path(tuned_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"{tuned_dir} is not a tuned model directory ({MANIFEST_FILE} is missing)")
    return json.loads(path.read_text())


def is_adapter(tuned_dir: str | Path) -> bool:
    return (Path(tuned_dir) / "adapter_config.json").is_file()


def base_path(manifest: dict[str, Any]) -> Path:
    """The base model directory of a tuned model; catalog bases are re-converted if the cache moved."""
    path = Path(manifest["baseModel"]["path"])
    if (path / "config.json").is_file():
        return path
    if manifest["baseModel"]["id"] in CATALOG:
        return resolve_base(manifest["baseModel"]["id"]).path
    if manifest["baseModel"].get("revision"):  # a Hub model: its recorded commit, from the cache or the Hub
        return resolve_base(f"{manifest['baseModel']['id'].split('@')[0]}@{manifest['baseModel']['revision']}").path
    raise ModelError(f"the base model of this tuned model is gone: {path}")


def load_tuned(tuned_dir: str | Path) -> tuple[Any, Any]:
    """Model and tokenizer of a tuned model directory (adapter on its base, or full weights)."""
    tuned_dir = Path(tuned_dir)
    manifest = read_manifest(tuned_dir)
    tokenizer = load_tokenizer(tuned_dir)
    if not is_adapter(tuned_dir):
        return load_model(tuned_dir), tokenizer
    from peft import PeftModel

    base = load_model(base_path(manifest))
    return PeftModel.from_pretrained(base, str(tuned_dir)), tokenizer


# --- a tuned model's kept checkpoints (one per epoch, ``tunery.tuning.checkpoint``), each servable by name ---------

EPOCH_DIR = "epoch-checkpoints"
"""Under the tuned model directory: ``ckpt-step-N/`` per kept epoch, each a tuned model directory of its own."""
CHECKPOINT_MARK = ":ckpt-step-"
"""A checkpoint's model name is its tuned model's and ``:ckpt-step-N`` (OpenAI's form): ``{id}:ckpt-step-94``."""


def split_checkpoint(model: str) -> tuple[str, str | None]:
    """``(tuned model, checkpoint folder name or None)`` of a model name: ``("ID", "ckpt-step-94")``."""
    if CHECKPOINT_MARK not in model:
        return model, None
    tuned, step = model.rsplit(CHECKPOINT_MARK, 1)
    return tuned, CHECKPOINT_MARK[1:] + step


def checkpoint_dir(tuned_dir: str | Path, name: str) -> Path:
    """The directory of the kept checkpoint ``name`` (``ckpt-step-N``) of a tuned model; ModelError if it has none."""
    path = Path(tuned_dir) / EPOCH_DIR / name
    if "/" in name or name.startswith(".") or not is_tuned_dir(path):
        kept = [c["name"] for c in kept_checkpoints(tuned_dir)]
        raise ModelError(f"no checkpoint {name!r} in this tuned model; it keeps: {', '.join(kept) or 'none'}")
    return path


def kept_checkpoints(tuned_dir: str | Path) -> list[dict[str, Any]]:
    """The kept checkpoints its ``tunery.json`` lists (``name``, ``step``, ``epoch``, ``metrics``), by step."""
    path = Path(tuned_dir) / MANIFEST_FILE
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("checkpoints") or [])


def checkpoint_views(tuned_dir: str | Path, model: str | None) -> dict[str, Any]:
    """A job resource's ``validation`` (where its validation examples came from: a file, a held-out slice, none),
    ``checkpoints`` (each named ``{model}:ckpt-step-N``, or by its directory when ``model`` is None) and
    ``bestCheckpoint`` (which the tuned model is, and why); empty for a model tuned before these were recorded."""
    path = Path(tuned_dir) / MANIFEST_FILE
    if not path.is_file():
        return {}
    manifest = json.loads(path.read_text())
    kept = [
        {
            "checkpointId": c["name"],
            "epoch": c["epoch"],
            "step": c["step"],
            "model": f"{model}:{c['name']}" if model else str(Path(tuned_dir) / EPOCH_DIR / c["name"]),
            "metrics": c["metrics"],
        }
        for c in manifest.get("checkpoints") or []
    ]
    found: dict[str, Any] = {}
    if (manifest.get("validation") or {}).get("note"):
        found["validation"] = manifest["validation"]["note"]  # where the validation examples came from
    if not kept:
        return found
    best = manifest.get("bestCheckpoint") or {}
    return {**found, "checkpoints": kept, "bestCheckpoint": {"checkpointId": best.get("name"), "why": best.get("why")}}
