"""Tuning jobs: the job store (SQLAlchemy; SQLite or PostgreSQL), job states, worker processes, the
server's scheduler, and the embedded executor the SDK uses without a server."""

from tunery.jobs.local import cancel, list_jobs, read, submit
from tunery.jobs.store import CANCELLED, CANCELLING, ENDED, FAILED, PENDING, RUNNING, SUCCEEDED, Job, Store

__all__ = [
    "CANCELLED",
    "CANCELLING",
    "ENDED",
    "FAILED",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "Job",
    "Store",
    "cancel",
    "list_jobs",
    "read",
    "submit",
]
