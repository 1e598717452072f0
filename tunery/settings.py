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
    """Tuning job work directories (worker logs), one per job."""
    return tunery_home() / "jobs"


def job_inputs_dir() -> Path:
    """Queued and running jobs' own links to the uploads they train from, one directory per job."""
    return tunery_home() / "job-inputs"


def database_url() -> str:
    """The job store: ``$TUNERY_DATABASE_URL`` (a PostgreSQL URL, say), else SQLite under ``$TUNERY_HOME``."""
    return os.environ.get("TUNERY_DATABASE_URL") or f"sqlite:///{tunery_home() / 'tunery.db'}"


def files_dir() -> Path:
    """Uploaded dataset files, one JSONL per file id."""
    return tunery_home() / "files"


def data_root() -> Path | None:
    """``$TUNERY_DATA_ROOT``: the only directory whose datasets and base models the service reads by path."""
    root = os.environ.get("TUNERY_DATA_ROOT")
    return Path(root).expanduser().resolve() if root else None
