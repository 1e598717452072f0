"""Checkpoints: trainable weights, optimizer, schedule, RNG and loop position, written atomically.

Layout under the run directory::

    checkpoints/step-000120/{weights.safetensors, optimizer.pt, state.json}
    checkpoints/latest            # name of the newest complete checkpoint

A checkpoint is built in a temporary folder and renamed into place, then ``latest`` is replaced
atomically, so a kill at any moment leaves the previous checkpoint readable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunery.errors import JobError


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: str | Path, model: Any, optimizer: Any, scheduler: Any, state: Any) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        save_file(trainable_state(model), str(staging / "weights.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},
            staging / "optimizer.pt",
        )
        (staging / "state.json").write_text(json.dumps(dataclasses.asdict(state)))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk gets its space back for the job's end to be recorded
        raise
    target = root / name
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    write_atomic(root / "latest", name)
    for old in root.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer, schedule and RNG from ``path``; returns the saved loop state."""
    weights = load_file(str(path / "weights.safetensors"))
    params = dict(model.named_parameters())
    missing = [name for name in weights if name not in params]
    if missing:
        raise JobError(f"{path}: checkpoint does not match the model (unknown weights such as {missing[0]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    saved = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return json.loads((path / "state.json").read_text())


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a torn file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
