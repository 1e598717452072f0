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
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunery.errors import JobError
from tunery.models.tuned import EPOCH_DIR
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


# --- the checkpoint of each epoch: a servable tuned model each, and the best of them ------------------------------

MOST_KEPT = 10
CHECKPOINT_PREFIX = "ckpt-step-"
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")


def kept_epochs(epochs: int, most: int = MOST_KEPT) -> set[int]:
    """The epochs (1-based) whose checkpoints a run keeps: all, or ``most`` spread evenly, the last among them."""
    if epochs <= most:
        return set(range(1, epochs + 1))
    return {math.ceil(i * epochs / most) for i in range(1, most + 1)}


def save_epoch_checkpoint(run_dir: str | Path, model: Any, step: int, epoch: int, metrics: dict[str, Any]) -> Path:
    """Save the weights (``save_pretrained``: a LoRA adapter or full weights) and metrics of the run at an epoch's
    end as ``EPOCH_DIR/ckpt-step-N``; ``finish_epoch_checkpoints`` makes it a tuned model directory."""
    root = Path(run_dir) / EPOCH_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"{CHECKPOINT_PREFIX}{step}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        (staging / "README.md").unlink(missing_ok=True)
        record = {"name": name, "step": step, "epoch": epoch, "metrics": _metrics_of(metrics)}
        (staging / "checkpoint.json").write_text(json.dumps(record, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    target = root / name
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def _metrics_of(metrics: dict[str, Any]) -> dict[str, float]:
    keep = ("train_loss", "train_token_accuracy", "eval_loss", "eval_token_accuracy", "eval_exact_match")
    return {key: round(float(metrics[key]), 6) for key in keep if key in metrics}


def epoch_checkpoints(tuned_dir: str | Path) -> list[dict[str, Any]]:
    """The kept checkpoints of a run, by step: ``{name, step, epoch, metrics, path}``."""
    root = Path(tuned_dir) / EPOCH_DIR
    found = []
    for record in root.glob(f"{CHECKPOINT_PREFIX}*/checkpoint.json") if root.is_dir() else ():
        found.append({**json.loads(record.read_text()), "path": str(record.parent)})
    return sorted(found, key=lambda c: c["step"])


def best_checkpoint(checkpoints: list[dict[str, Any]], by_answers: bool) -> tuple[dict[str, Any], str] | None:
    """The checkpoint the tuned model should be, and why: with ``by_answers`` (a closed label set or JSON answers)
    the highest validation exact match, ties to the lower validation loss; else the lowest validation loss; the
    last when there was no validation. None when no checkpoint was kept."""
    if not checkpoints:
        return None
    last = checkpoints[-1]
    scored = [c for c in checkpoints if "eval_loss" in c["metrics"]]
    if not scored:
        return last, "the last epoch's (no validation examples to choose by)"
    if by_answers and all("eval_exact_match" in c["metrics"] for c in scored):
        best = max(scored, key=lambda c: (c["metrics"]["eval_exact_match"], -c["metrics"]["eval_loss"]))
        value = best["metrics"]["eval_exact_match"]
        return best, f"highest validation exact match ({value:.1%}) at epoch {best['epoch']} of {last['epoch']}"
    best = min(scored, key=lambda c: c["metrics"]["eval_loss"])
    value = best["metrics"]["eval_loss"]
    return best, f"lowest validation loss ({value:.4f}) at epoch {best['epoch']} of {last['epoch']}"


def adopt_weights(checkpoint: str | Path, tuned_dir: str | Path) -> None:
    """Make ``tuned_dir``'s weights those of ``checkpoint`` (its weight files replace the directory's)."""
    source, target = Path(checkpoint), Path(tuned_dir)
    for pattern in WEIGHT_FILES:
        for old in target.glob(pattern):
            old.unlink()
    for pattern in WEIGHT_FILES:
        for path in source.glob(pattern):
            shutil.copy2(path, target / path.name)


def finish_epoch_checkpoints(tuned_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Give each kept checkpoint the tuned model's other files (tokenizer, adapter config, ``tunery.json`` naming
    the checkpoint), so that each loads and serves as a tuned model of its own."""
    tuned_dir = Path(tuned_dir)
    skip = {"metrics.jsonl", "run.json", "tunery.json", "evaluation.json", "predictions.jsonl"}
    shared = [
        p
        for p in tuned_dir.iterdir()
        if p.is_file() and p.name not in skip and not any(p.match(w) for w in WEIGHT_FILES) and p.suffix != ".jsonl"
    ]
    for checkpoint in epoch_checkpoints(tuned_dir):
        folder = Path(checkpoint["path"])
        for path in shared:
            shutil.copy2(path, folder / path.name)
        own = {
            **manifest,
            "id": f"{manifest['id']}:{checkpoint['name']}",
            "checkpoint": {k: checkpoint[k] for k in ("name", "step", "epoch", "metrics")},
        }
        own.pop("checkpoints", None)
        write_atomic(folder / "tunery.json", json.dumps(own, indent=2))
