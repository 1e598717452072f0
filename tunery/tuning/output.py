"""Tuned model directories: read their manifest, merge an adapter into a standalone model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tunery.errors import ModelError
from tunery.models.catalog import CATALOG
from tunery.models.loading import load_model, load_tokenizer
from tunery.models.sources import resolve_base
from tunery.tuning.checkpoint import write_atomic
from tunery.tuning.prepare import MANIFEST_FILE, METRICS_FILE


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


def merge(tuned_dir: str | Path, output: str | Path) -> Path:
    """Write a standalone model (adapter folded into the base weights) to ``output``."""
    tuned_dir, output = Path(tuned_dir), Path(output)
    if not is_adapter(tuned_dir):
        raise ModelError(f"{tuned_dir} holds full weights already; there is no adapter to merge")
    if output.exists() and any(output.iterdir()):
        raise ModelError(f"{output} already exists and is not empty")
    model, tokenizer = load_tuned(tuned_dir)
    merged = model.merge_and_unload()
    merged.config._name_or_path = str(output)
    merged.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    shutil.copy(tuned_dir / METRICS_FILE, output / METRICS_FILE)
    manifest = read_manifest(tuned_dir)
    manifest.update({"id": output.name, "tuningMode": "FULL", "mergedFrom": str(tuned_dir.resolve())})
    write_atomic(output / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return output
