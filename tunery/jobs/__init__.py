"""Tuning jobs: the job resource, its states, and the embedded executor (a worker process per job)."""

from tunery.jobs.local import (
    CANCELLED,
    CANCELLING,
    ENDED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    cancel,
    list_jobs,
    read,
    submit,
)

__all__ = [
    "CANCELLED",
    "CANCELLING",
    "ENDED",
    "FAILED",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "cancel",
    "list_jobs",
    "read",
    "submit",
]
