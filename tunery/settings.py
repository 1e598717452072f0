"""Where tunery keeps its files: ``$TUNERY_HOME`` (default ``~/.tunery``)."""

from __future__ import annotations

import os
from pathlib import Path


def tunery_home() -> Path:
    """The root of tunery's state: converted base models, tuned models, jobs."""
    return Path(os.environ.get("TUNERY_HOME") or Path.home() / ".tunery").expanduser()


def models_cache() -> Path:
    """Converted base models, one safetensors directory per catalog id."""
    return tunery_home() / "models"


def tuned_models_dir() -> Path:
    """Default parent of tuned model directories."""
    return tunery_home() / "tuned-models"


def jobs_dir() -> Path:
    """Embedded tuning jobs, one directory per job."""
    return tunery_home() / "jobs"
