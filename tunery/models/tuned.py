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
