"""Checkpoints: trainable weights, optimizer, schedule, RNG and loop position, written atomically.

Layout under the run directory::

    checkpoints/step-000120/{weights.safetensors, optimizer.pt, state.json}
    checkpoints/latest            # name of the newest complete checkpoint

A checkpoint is built in a temporary folder and renamed into place, then ``latest`` is replaced
atomically, so a kill at any moment leaves the previous checkpoint readable.

The format does not depend on the processes that wrote it: weights sharded across processes (FSDP) are
gathered into whole tensors, and the optimizer state with them, by every process (a collective), and process
0 writes them; loading gives each process its own shard again.
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
from tunery.tuning.distributed import full_tensor, like_param


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable weights by name, whole (gathered when sharded: every process calls it)."""
    return {name: full_tensor(p).contiguous() for name, p in model.named_parameters() if p.requires_grad}


def optimizer_state(optimizer: Any) -> dict[str, Any]:
    """``optimizer.state_dict()`` with whole tensors (gathered when sharded: every process calls it)."""
    saved = optimizer.state_dict()
    saved["state"] = {
        index: {key: full_tensor(v) if isinstance(v, torch.Tensor) else v for key, v in values.items()}
        for index, values in saved["state"].items()
    }
    return saved


def save_checkpoint(
    run_dir: str | Path, model: Any, optimizer: Any, scheduler: Any, state: Any, write: bool = True
) -> Path:
    """Checkpoint the run; with several processes each calls it (sharded state is gathered), ``write`` on one."""
    root = Path(run_dir) / "checkpoints"
    name = f"step-{state.step:06d}"
    weights, optimizer_saved = trainable_state(model), optimizer_state(optimizer)
    if not write:
        return root / name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        save_file(weights, str(staging / "weights.safetensors"))
        torch.save(
            {"optimizer": optimizer_saved, "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},
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
            params[name].copy_(like_param(params[name], tensor))
    saved = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    for param, values in optimizer.state.items():  # sharded weights: this process's shard of their state
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                values[key] = like_param(param, value)
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
