"""Tuning from a tuned model: where a run starts when its ``baseModel`` names a tuned model, and the chain back to
the original base that its ``tunery.json`` records.

A tuned model is named by its directory, its id (a directory under ``$TUNERY_HOME/tuned-models``), OpenAI's
``ft:...:{id}`` or Vertex's ``projects/*/locations/*/models/{id}`` (the server resolves these to the tenant's own
directory before the job). Then:

- a LoRA model **continues its adapter** (``PEFT_ADAPTER`` again): the new adapter is the old one trained further,
  still one adapter on the original base, so the result serves, merges and exports exactly like any LoRA model
  (stacking a second adapter would need every server to apply two). For DPO the reference is the tuned model itself
  (the policy at step 0, ``objectives.py``), which is what DPO after SFT wants. The old adapter's rank is kept.
  Tuned ``FULL`` from a LoRA model, the adapter is merged into its base first;
- a FULL model **is the new base**: its weights are loaded as any base's (a new adapter on them, or every weight
  trained again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunery.models.catalog import CATALOG
from tunery.models.sources import BaseModel, resolve_base, sha256_file
from tunery.models.tuned import base_path, is_adapter, is_tuned_dir, read_manifest
from tunery.settings import tuned_models_dir

TUNED_NAME = re.compile(
    r"^(?:projects/[^/]+/locations/[^/]+/)?(?:models/)?(?:ft:[^/]*:)?(?P<id>[A-Za-z0-9._-]{1,128})$"
)
"""A tuned model's id as the clients write it: ``{id}``, ``models/{id}``, ``ft:...:{id}``,
``projects/{p}/locations/{l}/models/{id}``."""
WEIGHTS = ("adapter_model.safetensors", "model.safetensors")


@dataclass(frozen=True)
class Start:
    """What a run starts from: the base model it loads, a LoRA adapter to continue on it (or None), and the tuned
    models it descends from, newest first (``tunedFrom`` in ``tunery.json``; empty for a plain base)."""

    base: BaseModel
    adapter: Path | None = None
    chain: list[dict[str, Any]] = field(default_factory=list)


def tuned_dir(name: str) -> Path | None:
    """The tuned model directory ``name`` names (a path, or an id under the tuned models folder), or None."""
    path = Path(name).expanduser()
    if is_tuned_dir(path):
        return path.resolve()
    found = TUNED_NAME.match(name)
    if found and name not in CATALOG and is_tuned_dir(tuned_models_dir() / found["id"]):
        return (tuned_models_dir() / found["id"]).resolve()
    return None


def resolve_start(name: str) -> Start:
    """The ``Start`` of a run whose ``baseModel`` is ``name``: a plain base, or a tuned model (module docstring)."""
    path = tuned_dir(name)
    if path is None:
        return Start(resolve_base(name))
    manifest = read_manifest(path)
    recorded = manifest["baseModel"]
    original = resolve_base(recorded["id"] if recorded["id"] in CATALOG else str(base_path(manifest)))
    chain = [link(path, manifest), *manifest.get("tunedFrom", [])]
    if is_adapter(path):
        return Start(original, path, chain)
    weights = path / "model.safetensors"
    tuned = replace(original, id=manifest["id"], path=path, sha256=sha256_file(weights) if weights.is_file() else None)
    return Start(tuned, None, chain)


def link(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """One tuned model of a chain: what it is, its weights' hash and the base it sits on."""
    weights = next((path / name for name in WEIGHTS if (path / name).is_file()), None)
    return {
        "id": manifest["id"],
        "path": str(path),
        "objective": manifest.get("objective", "SFT"),
        "tuningMode": manifest["tuningMode"],
        "sha256": sha256_file(weights) if weights else None,
        "baseModel": {"id": manifest["baseModel"]["id"], "sha256": manifest["baseModel"].get("sha256")},
    }
