"""``TuningJob``: a handle on a tuning job, shaped like Vertex's ``SupervisedTuningJob``.

Embedded, a job lives in this machine's job store (``tunery.jobs``); after ``tunery.init(...)`` it is a
job on a tunery server, read and cancelled over its REST API. The methods are the same either way.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator
from typing import Any

from tunery import jobs
from tunery.errors import JobError
from tunery.sdk import client as remote


class TuningJob:
    """A tuning job; ``refresh()`` reads its current state, ``watch()`` follows its events live."""

    def __init__(self, resource: dict[str, Any], client: remote.Client | None = None) -> None:
        self._resource = resource
        self._client = client

    @classmethod
    def get(cls, name: str) -> TuningJob:
        """The job ``tuningJobs/ID`` (or ``ID``)."""
        client = remote.current()
        if client is not None:
            return cls(client.get_job(name), client)
        return cls(jobs.read(name.split("/")[-1]))

    @classmethod
    def list(cls, state: str | None = None, labels: dict[str, str] | None = None) -> list[TuningJob]:
        """Every job, newest first; only those in ``state`` (``JOB_STATE_...``) with all of ``labels`` if given."""
        client = remote.current()
        if client is not None:
            return [cls(r, client) for r in client.list_jobs(state=state, labels=labels)]
        found = [cls(r) for r in jobs.list_jobs()]
        return [j for j in found if (not state or j.state == state) and _has_labels(j.labels, labels)]

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
    def labels(self) -> dict[str, str]:
        return self._resource.get("labels") or {}

    @property
    def tuned_model_name(self) -> str | None:
        """The tuned model once the job has succeeded, as ``GenerativeModel`` takes it: its directory
        (embedded) or ``models/ID`` (on a server)."""
        return (self._resource.get("tunedModel") or {}).get("model")

    @property
    def tuned_model_endpoint_name(self) -> str | None:
        """The tuned model's ``generateContent`` URL on the server (None when embedded)."""
        return (self._resource.get("tunedModel") or {}).get("endpoint")

    def to_dict(self) -> dict[str, Any]:
        return dict(self._resource)

    def refresh(self) -> TuningJob:
        if self._client is not None:
            self._resource = self._client.get_job(self.id)
        else:
            self._resource = jobs.read(self.id)
        return self

    def cancel(self) -> None:
        """Ask the job to stop: it saves a checkpoint and ends CANCELLED (``state`` is CANCELLING meanwhile)."""
        if self._client is not None:
            self._resource = self._client.cancel_job(self.id)
        else:
            self._resource = jobs.cancel(self.id)

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> TuningJob:
        """Block until the job ends; raises JobError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().has_ended:
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"{self.name} still {self.state} after {timeout} s")
            time.sleep(poll)
        return self

    def events(self, after: int = 0) -> builtins.list[dict[str, Any]]:
        """The job's events so far after event ``after``, oldest first: ``{"id", "createTime", "type":
        "state" | "metrics", "message"?, "data"?}``; metrics events hold a step's ``train_loss`` and so on."""
        if self._client is not None:
            return self._client.events(self.id, after)
        return _embedded_events(self.id, after)

    def watch(self, after: int = 0, poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """Yield the job's events after event ``after`` as they happen, until the job has ended; the job is
        refreshed at the end. On a server this is its event stream; embedded, the store is read every ``poll`` s."""
        if self._client is not None:
            yield from self._client.stream_events(self.id, after)
            self.refresh()
            return
        while True:
            ended = self.refresh().has_ended  # read first: the events read next then include the last ones
            for event in self.events(after):
                after = event["id"]
                yield event
            if ended:
                return
            time.sleep(poll)

    def __repr__(self) -> str:
        return f"TuningJob({self.name!r}, state={self.state!r})"


def _has_labels(labels: dict[str, str], wanted: dict[str, str] | None) -> bool:
    return all(labels.get(k) == v for k, v in (wanted or {}).items())


def _embedded_events(job_id: str, after: int) -> list[dict[str, Any]]:
    from tunery.jobs.local import TENANT

    store = jobs.Store()
    try:
        found: list[dict[str, Any]] = []
        while batch := store.events(TENANT, job_id, after):
            found += batch
            after = batch[-1]["id"]
        return found
    finally:
        store.close()
