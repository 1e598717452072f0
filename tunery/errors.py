"""The one exception hierarchy of tunery.

Every error a user can cause (bad data, an unknown model, a bad hyperparameter) is a ``TuneryError``
with a message that names the file, line, field or value at fault. The CLI prints these without a
traceback and exits 1; anything else is a bug.

    TuneryError
    ├── ConfigError      a hyperparameter or option is out of range
    ├── DatasetError     a dataset file has problems (``.problems`` lists every one)
    ├── ModelError       a base model or tuned model cannot be found or loaded
    ├── JobError         a tuning job cannot be created, found or resumed
    │   └── TuningCancelled   a run stopped on request after saving a checkpoint
    ├── NotFoundError    a job, file, model or key does not exist (or belongs to another tenant)
    ├── ConflictError    the request contradicts the resource's state (an Idempotency-Key reused with another body)
    ├── ServingError     the model host process crashed, timed out or failed inside (HTTP status in ``.code``)
    ├── DiskFullError    a disk the service writes to (uploads, tuned models, the job store) has no space left
    ├── ResourceExhaustedError   a limit on waiting work was reached: retry after ``.retry_after`` seconds (HTTP 429)
    ├── AuthenticationError   a tunery server refused the API key (HTTP 401/403)
    └── APIConnectionError    a tunery server cannot be reached (the SDK in remote mode, after its retries)
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunery.data.validation import Problem


def problems_message(problems: list[tuple[str, str]], what: str = "request") -> str:
    """One line naming how many ``(field, message)`` problems a request has, and the first ten."""
    n = len(problems)
    summary = "; ".join(f"{f}: {m}" for f, m in problems[:10])
    return f"invalid {what}: {n} problem{'s' * (n != 1)}: {summary}"


class TuneryError(Exception):
    """Base class of every error tunery raises on purpose."""


class ConfigError(TuneryError):
    """A hyperparameter, option or setting is invalid."""


class DatasetError(TuneryError):
    """A dataset has problems; ``problems`` holds every one, by line and field."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        lines = [self.args[0], *(str(p) for p in self.problems)]
        return "\n".join(lines)


class ModelError(TuneryError):
    """A base model or tuned model cannot be found, converted or loaded."""


class JobError(TuneryError):
    """A tuning job cannot be created, found or resumed."""


class TuningCancelled(JobError):
    """A tuning run was cancelled; its last checkpoint is on disk and ``--resume`` continues it."""

    def __init__(self, message: str, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class NotFoundError(TuneryError):
    """A job, file, model or key does not exist, or belongs to another tenant (which must not be told apart)."""


class ConflictError(TuneryError):
    """A request contradicts the state of a resource, such as an ``Idempotency-Key`` reused with another body."""


class ServingError(TuneryError):
    """The model host process cannot answer: it would not start, crashed, timed out, or failed with a bug.

    Not the user's fault; ``code`` is the HTTP status to answer: 503 when the host is unavailable or died,
    504 when it timed out, 500 for an unexpected error inside it (its traceback is in the host's log).
    """

    def __init__(self, message: str, code: int = 503) -> None:
        super().__init__(message)
        self.code = code


class DiskFullError(TuneryError):
    """A disk tunery writes to is full (``ENOSPC``, SQLite's ``database or disk is full``); the service answers 507.

    The message names the disk by what it holds (``the disk holding TUNERY_HOME``), not by a server path, and
    says how much is free; ``disk_full(exc, where)`` turns an ``OSError`` or a database error into one.
    """


DISK_FULL_TEXTS = ("No space left on device", "database or disk is full", "could not extend file")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain of causes, bounded
        if seen is None:
            return False
        if isinstance(seen, DiskFullError) or getattr(seen, "errno", None) == errno.ENOSPC:
            return True
        if any(text in str(seen) for text in DISK_FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full(exc: BaseException, where: Path | None, what: str) -> DiskFullError | None:
    """A ``DiskFullError`` for ``exc`` if it is a full disk, else None. ``where`` is a path on that disk (None:
    on another machine, such as a PostgreSQL server's); ``what`` names the disk for the user, by what it holds."""
    if isinstance(exc, DiskFullError):
        return exc
    if not is_disk_full(exc):
        return None
    if where is None:
        return DiskFullError(f"the disk holding {what} is full")
    existing = next((p for p in (where, *where.parents) if p.exists()), None)
    if existing is None:
        return DiskFullError(f"the disk holding {what} is full")
    usage = shutil.disk_usage(existing)
    return DiskFullError(
        f"the disk holding {what} is full ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB): "
        "free some space, then try again"
    )


class ResourceExhaustedError(TuneryError):
    """A limit on waiting work was reached (a model host's queue, a tenant's requests, tokens or tuning jobs).

    Nothing was started; the same request may succeed after ``retry_after`` seconds (HTTP 429 with ``Retry-After``).
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthenticationError(TuneryError):
    """A tunery server refused the request's API key: missing, unknown, revoked, or not allowed (401/403)."""


class APIConnectionError(TuneryError):
    """A tunery server cannot be reached at its endpoint (refused, reset, timed out), even after retries."""


# --- HTTP: the one table between these errors and the statuses the service answers -------------------------

HTTP_STATUSES: tuple[tuple[type[TuneryError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (ResourceExhaustedError, 429),
    (DiskFullError, 507),
)
"""The errors with an HTTP status of their own. ``ServingError`` carries its own (``.code``); every other
``TuneryError`` is a request at fault (400), and anything else a bug (500)."""


def http_status(exc: BaseException) -> int:
    """The HTTP status that answers ``exc`` (the API's error bodies, the model host's replies)."""
    if isinstance(exc, ServingError):
        return exc.code
    for cls, code in HTTP_STATUSES:
        if isinstance(exc, cls):
            return code
    return 400 if isinstance(exc, TuneryError) else 500


def error_for_status(status: int, message: str) -> TuneryError | None:
    """The way back (the model host's replies, the SDK's answers): the error whose own status ``status`` is
    (``HTTP_STATUSES``), or None for a status that more than one error answers with."""
    for cls, code in HTTP_STATUSES:
        if code == status:
            return cls(message)
    return None
