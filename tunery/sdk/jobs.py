"""``TuningJob``: a handle on a tuning job, shaped like Vertex's ``SupervisedTuningJob``."""

from __future__ import annotations

import time
from typing import Any

from tunery import jobs
from tunery.errors import JobError


class TuningJob:
    """A tuning job; ``refresh()`` reads its current state."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self._resource = resource

    @classmethod
    def get(cls, name: str) -> TuningJob:
        return cls(jobs.read(name.split("/")[-1]))

    @classmethod
    def list(cls) -> list[TuningJob]:
        return [cls(r) for r in jobs.list_jobs()]

    @property
    def resource_name(self) -> str:
        return self._resource["name"]

    @property
    def name(self) -> str:
        return self.resource_name

    @property
    def id(self) -> str:
        return self.resource_name.split("/")[-1]

    @property
    def state(self) -> str:
        return self._resource["state"]

    @property
    def has_ended(self) -> bool:
        return self.state in jobs.ENDED

    @property
    def has_succeeded(self) -> bool:
        return self.state == jobs.SUCCEEDED

    @property
    def error(self) -> dict[str, Any] | None:
        return self._resource.get("error")

    @property
    def tuned_model_name(self) -> str | None:
        """The tuned model (a directory, which ``GenerativeModel`` loads), once the job has succeeded."""
        return (self._resource.get("tunedModel") or {}).get("model")

    @property
    def tuned_model_endpoint_name(self) -> str | None:
        return (self._resource.get("tunedModel") or {}).get("endpoint")

    def to_dict(self) -> dict[str, Any]:
        return dict(self._resource)

    def refresh(self) -> TuningJob:
        self._resource = jobs.read(self.id)
        return self

    def cancel(self) -> None:
        self._resource = jobs.cancel(self.id)

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> TuningJob:
        """Block until the job ends; raises JobError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().has_ended:
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"{self.name} still {self.state} after {timeout} s")
            time.sleep(poll)
        return self

    def __repr__(self) -> str:
        return f"TuningJob({self.name!r}, state={self.state!r})"
