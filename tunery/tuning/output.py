"""Tuned model output beyond the training run: merging an adapter into a standalone model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunery.errors import ModelError
from tunery.models.tuned import MANIFEST_FILE, METRICS_FILE, is_adapter, load_tuned, read_manifest
from tunery.tuning.checkpoint import write_atomic


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
