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
    ├── ResourceExhaustedError   a limit on waiting work was reached: retry after ``.retry_after`` seconds (HTTP 429)
    ├── AuthenticationError   a tunery server refused the API key (HTTP 401/403)
    └── APIConnectionError    a tunery server cannot be reached (the SDK in remote mode, after its retries)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunery.data.validation import Problem


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
