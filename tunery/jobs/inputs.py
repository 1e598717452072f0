"""A job's own links to the uploaded files it trains from.

A job created from uploads reads hard links (copies across file systems) under
``$TUNERY_HOME/job-inputs/<job id>``, so deleting an upload while the job waits or runs cannot break
it. Once the job has ended the scheduler removes them (``release_ended``): a deleted upload is then
gone from disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunery.jobs.store import Store
from tunery.settings import job_inputs_dir


def pin(job_id: str, files: dict[str, Path]) -> dict[str, Path]:
    """The job's own link to each of ``files`` (name → upload), by the same names."""
    directory = job_inputs_dir() / job_id
    pinned = {}
    for name, source in files.items():
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{name}.jsonl"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        pinned[name] = target
    return pinned


UPLOADED_MEDIA = "files"


def pin_media(job_id: str, files: dict[str, Path]) -> Path:
    """The job's own links to the media uploads its datasets name (file id → upload), as
    ``<job inputs>/files/<id>``: the folder ``TuningSpec.uploaded_media`` names."""
    directory = job_inputs_dir() / job_id / UPLOADED_MEDIA
    directory.mkdir(parents=True, exist_ok=True)
    for file_id, source in files.items():
        target = directory / file_id
        try:
            os.link(source, target)
        except FileExistsError:
            continue
        except OSError:
            shutil.copyfile(source, target)
    return directory


def release(job_id: str) -> None:
    """Remove the job's links (the uploads themselves stay until they are deleted)."""
    shutil.rmtree(job_inputs_dir() / job_id, ignore_errors=True)


def release_ended(store: Store) -> None:
    """Release the inputs of every job that has ended. A directory whose job is not stored yet (being
    created) is left alone."""
    try:
        held = [entry.name for entry in os.scandir(job_inputs_dir())]
    except FileNotFoundError:
        return
    if held:
        for job_id in store.ended_job_ids(held):
            release(job_id)
