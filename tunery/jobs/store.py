"""The job store: tuning jobs and their events, uploaded files, tuned models and API keys, in SQL.

SQLAlchemy Core on SQLite (the embedded default, ``$TUNERY_HOME/tunery.db``) or PostgreSQL
(``TUNERY_DATABASE_URL``). Rows are storage; ``Job.resource()`` is the REST shape (camelCase,
Vertex's names). Every read and write that a user can reach takes a tenant: another tenant's rows are
``NotFoundError``, exactly like rows that do not exist.

    store = Store()                        # migrates on open
    job, created = store.create_job("default", spec, request={...})
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, column, create_engine, event, func, or_, select, table
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.sql.expression import Select, TableClause

from tunery.errors import ConflictError, DiskFullError, JobError, NotFoundError, disk_full
from tunery.jobs.migrations import migrate
from tunery.models.tuned import checkpoint_views
from tunery.settings import database_url
from tunery.tuning.spec import TuningSpec

PENDING, RUNNING, SUCCEEDED, FAILED = (
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
)
CANCELLING, CANCELLED = "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})
EMBEDDED = "embedded"  # worker_owner of a job started by the SDK without a server

EXIT_INTERRUPTED = 75  # a worker's exit status (EX_TEMPFAIL): stopped at a checkpoint, to be resumed
EXIT_DISK_FULL = 73  # a worker's exit status (EX_CANTCREAT): the disk was full and the job's end could not be recorded
# google.rpc.Code values, as Vertex reports them in ``error.code``
CODE_CANCELLED, CODE_INVALID_ARGUMENT, CODE_INTERNAL = 1, 3, 13

JSON_COLUMNS = {"labels", "request", "spec", "stats", "error", "data"}


def _table(name: str, columns: str) -> TableClause:
    return table(name, *(column(c) for c in columns.split()))


jobs_t = _table(
    "jobs",
    "seq id tenant state base_model display_name tuning_mode labels request spec stats error tuned_model_id "
    "create_time start_time end_time update_time idempotency_key request_hash attempts worker_pid worker_owner "
    "cancel_requested",
)
events_t = _table("job_events", "seq job_id time type message data")
files_t = _table("files", "id tenant display_name path size_bytes sha256 example_count model stats create_time")
models_t = _table("tuned_models", "id tenant job_id display_name base_model tuning_mode path create_time")
keys_t = _table("api_keys", "id tenant hash create_time")


def now() -> str:
    """RFC 3339 UTC with milliseconds, as Vertex writes timestamps; sorts as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    """Time-ordered, unguessable: 14 digits of UTC time and 12 hex digits."""
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(6)


@dataclass
class Job:
    """A ``jobs`` row, JSON columns decoded."""

    id: str
    tenant: str
    state: str
    base_model: str
    display_name: str
    tuning_mode: str
    labels: dict[str, str]
    request: dict[str, Any]
    spec: dict[str, Any]
    create_time: str
    update_time: str
    seq: int = 0
    stats: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    tuned_model_id: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    attempts: int = 0
    worker_pid: int | None = None
    worker_owner: str | None = None
    cancel_requested: bool = False

    @property
    def has_ended(self) -> bool:
        return self.state in ENDED

    @property
    def output(self) -> str:
        return self.spec["output"]

    def resource(self, api_base: str | None = None) -> dict[str, Any]:
        """The REST resource. ``api_base`` (``http://host:port/``) names the tuned model as the service
        serves it (``models/{id}`` and its endpoint); without it (embedded) the model is its directory."""
        state = CANCELLING if self.cancel_requested and self.state in (PENDING, RUNNING) else self.state
        resource: dict[str, Any] = {
            "name": f"tuningJobs/{self.id}",
            "baseModel": self.request.get("baseModel", self.base_model),  # as sent; the spec has the resolved path
            "tunedModelDisplayName": self.display_name,
            "tuningMode": self.tuning_mode,
            **{key: self.request[key] for key in ("preferenceOptimizationSpec",) if key in self.request},
            "supervisedTuningSpec": self.request.get("supervisedTuningSpec", {}),
            "state": state,
            "createTime": self.create_time,
            "updateTime": self.update_time,
            "labels": self.labels,
        }
        for key, value in (("startTime", self.start_time), ("endTime", self.end_time), ("error", self.error)):
            if value:
                resource[key] = value
        if self.tuned_model_id:
            if api_base is None:
                resource["tunedModel"] = {"model": self.output, "endpoint": None}
            else:
                model = f"models/{self.tuned_model_id}"
                resource["tunedModel"] = {"model": model, "endpoint": f"{api_base}v1/{model}:generateContent"}
            named = None if api_base is None else resource["tunedModel"]["model"]
            resource["tunedModel"].update(checkpoint_views(self.output, named))
        if self.stats:
            resource["tuningDataStats"] = {"supervisedTuningDataStats": self.stats}
        return resource


@dataclass
class StoredFile:
    id: str
    tenant: str
    display_name: str
    path: str
    size_bytes: int
    sha256: str
    example_count: int
    model: str
    stats: dict[str, Any]
    create_time: str

    def resource(self) -> dict[str, Any]:
        return {
            "name": f"files/{self.id}",
            "displayName": self.display_name,
            "mimeType": self.stats.get("mimeType", "application/jsonl"),  # a media upload's type, sniffed
            "sizeBytes": str(self.size_bytes),
            "sha256Hash": self.sha256,
            "createTime": self.create_time,
            "exampleCount": self.example_count,
            "tokenizedWith": self.model,
            "supervisedTuningDataStats": {k: v for k, v in self.stats.items() if k != "partialCheck"},
            **({"partialCheck": self.stats["partialCheck"]} if "partialCheck" in self.stats else {}),
        }


@dataclass
class TunedModel:
    id: str
    tenant: str
    job_id: str
    display_name: str
    base_model: str
    tuning_mode: str
    path: str
    create_time: str

    def resource(self, api_base: str = "") -> dict[str, Any]:
        return {
            "name": f"models/{self.id}",
            "displayName": self.display_name,
            "baseModel": self.base_model,
            "tuningMode": self.tuning_mode,
            "tuningJob": f"tuningJobs/{self.job_id}",
            "createTime": self.create_time,
            "endpoint": f"{api_base}v1/models/{self.id}:generateContent",
        }


def connect_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for writes."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        for pragma in ("journal_mode=WAL", "busy_timeout=30000", "synchronous=NORMAL"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A write that starts as a read can fail at once in WAL mode if another writer got in between;
        # taking the write lock up front makes it wait for its turn (busy_timeout) instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")

    return engine


def _decode(row: Any) -> dict[str, Any]:
    values = dict(row._mapping)
    for key in JSON_COLUMNS & values.keys():
        if values[key] is not None:
            values[key] = json.loads(values[key])
    return values


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()}


def _job(row: Any) -> Job:
    values = _decode(row)
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _owned(t: TableClause, key: str, tenant: str | None) -> Select:
    """The row of ``t`` with id ``key``, if ``tenant`` owns it (``tenant=None``: workers and the scheduler)."""
    query = select(t).where(t.c.id == key)
    return query if tenant is None else query.where(t.c.tenant == tenant)


T = TypeVar("T")
# What a store call raises while the database is down, restarting or out of disk: worth trying again
TRANSIENT = (OperationalError, InterfaceError, PoolTimeoutError, DiskFullError)


def retrying(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()``, tried again with backoff (0.25 s, doubling to 8 s) for up to ``seconds`` while the store fails
    (``TRANSIENT``); then the last error is raised. Each retry is one line on stderr (the worker's log)."""
    deadline, delay = time.monotonic() + seconds, 0.25
    while True:
        try:
            return call()
        except TRANSIENT as exc:
            if time.monotonic() + delay > deadline:
                raise
            with contextlib.suppress(OSError):  # stderr may be a log on the full disk
                print(f"tunery: {what} failed ({short_error(exc)}); retry in {delay:g} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def short_error(exc: BaseException) -> str:
    """The first line of ``exc``'s message (a database error's SQL and parameters left out), at most 200 characters."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _first(conn: Connection, query: Select, name: str) -> Any:
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"{name} not found")
    return row


@dataclass
class Store:
    """The job store at ``url`` (default ``settings.database_url()``), migrated on open."""

    url: str = field(default_factory=database_url)

    def __post_init__(self) -> None:
        # where the database lives, to name its disk when that is full (None: another machine's disk)
        self._disk: Path | None = None
        if self.url.startswith("sqlite:///"):
            self._disk = Path(self.url.removeprefix("sqlite:///"))
            self._disk.parent.mkdir(parents=True, exist_ok=True)
        self.engine = connect_engine(self.url)
        migrate(self.engine)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; a full disk raises ``DiskFullError`` naming the job store's disk."""
        try:
            with self.engine.connect() as conn:
                conn.info["immediate"] = True
                try:
                    with conn.begin():
                        yield conn
                finally:
                    conn.info.pop("immediate", None)
        except OperationalError as exc:
            full = disk_full(exc, self._disk, "the job store")
            if full is None:
                raise
            raise full from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs --------------------------------------------------------------------------------------

    def create_job(
        self,
        tenant: str,
        spec: TuningSpec,
        request: dict[str, Any],
        *,
        job_id: str | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a PENDING job; returns it and whether it is new. A repeated ``idempotency_key`` returns
        the job it created first, or raises ConflictError if the request differs."""
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        if idempotency_key:
            existing = self._by_idempotency_key(tenant, idempotency_key)
            if existing is not None:
                return self._same_request(existing, digest), False
        job_id = job_id or new_id()
        stamp = now()
        values = {
            "id": job_id,
            "tenant": tenant,
            "state": PENDING,
            "base_model": spec.base_model,
            "display_name": spec.display_name or job_id,
            "tuning_mode": spec.method,
            "labels": spec.labels,
            "request": request,
            "spec": spec.to_dict(),
            "create_time": stamp,
            "update_time": stamp,
            "idempotency_key": idempotency_key,
            "request_hash": digest,
            "attempts": 0,
            "worker_owner": owner,
            "cancel_requested": 0,
        }
        try:
            with self._write() as conn:
                conn.execute(jobs_t.insert().values(**_encode(values)))
                self._event(conn, job_id, "state", "job created", {"state": PENDING})
        except IntegrityError:  # the same key raced in from another request
            existing = self._by_idempotency_key(tenant, idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return self._same_request(existing, digest), False
        return self.get_job(tenant, job_id), True

    def _by_idempotency_key(self, tenant: str, key: str) -> Job | None:
        with self._read() as conn:
            row = conn.execute(select(jobs_t).where(jobs_t.c.tenant == tenant, jobs_t.c.idempotency_key == key)).first()
        return _job(row) if row else None

    @staticmethod
    def _same_request(job: Job, digest: str) -> Job:
        if job.request_hash != digest:
            raise ConflictError(
                f"Idempotency-Key {job.idempotency_key!r} was used for tuningJobs/{job.id} with a different request"
            )
        return job

    def get_job(self, tenant: str | None, job_id: str) -> Job:
        """The job, or NotFoundError; ``tenant=None`` (workers, the scheduler) reads any tenant's."""
        with self._read() as conn:
            return _job(_first(conn, _owned(jobs_t, job_id, tenant), f"tuningJobs/{job_id}"))

    def list_jobs(
        self,
        tenant: str,
        *,
        state: str | None = None,
        labels: dict[str, str] | None = None,
        page_size: int = 50,
        page_token: str | None = None,
        batch: bool = False,
    ) -> tuple[list[Job], str | None]:
        """Newest first; ``labels`` must all match. The page token is the last job's sequence number.
        Tuning jobs, or with ``batch`` batch prediction jobs (``tunery.jobs.batch``); export jobs
        (``tunery.jobs.export``) are neither."""
        query = select(jobs_t).where(jobs_t.c.tenant == tenant)
        mode = jobs_t.c.tuning_mode
        query = query.where(mode == "BATCH_PREDICTION" if batch else mode.notin_(["BATCH_PREDICTION", "EXPORT"]))
        if state:
            if state not in STATES:
                raise JobError(f"state {state!r}: expected one of {', '.join(STATES)}")
            if state == CANCELLING:
                query = query.where(jobs_t.c.cancel_requested == 1, jobs_t.c.state.in_([PENDING, RUNNING]))
            elif state in (PENDING, RUNNING):
                query = query.where(jobs_t.c.state == state, jobs_t.c.cancel_requested == 0)
            else:
                query = query.where(jobs_t.c.state == state)
        if page_token:
            if not page_token.isdigit():
                raise JobError(f"pageToken {page_token!r} is not one this server issued")
            query = query.where(jobs_t.c.seq < int(page_token))
        found: list[Job] = []
        with self._read() as conn:
            # labels are JSON text: filter in Python, reading in pages so a page is always full
            for row in conn.execute(query.order_by(jobs_t.c.seq.desc())):
                job = _job(row)
                if labels and any(job.labels.get(k) != v for k, v in labels.items()):
                    continue
                found.append(job)
                if len(found) > page_size:
                    break
        more = len(found) > page_size
        found = found[:page_size]
        return found, str(found[-1].seq) if more else None

    def request_cancel(self, tenant: str | None, job_id: str) -> Job:
        """Mark the job for cancelling. A job no worker has taken is CANCELLED at once; an ended job is left
        as it is. Whoever runs the worker stops it (``worker_pid`` gets SIGTERM)."""
        with self._write() as conn:
            job = self._locked_job(conn, tenant, job_id)
            if job.has_ended or job.cancel_requested:
                return job
            stamp = now()
            if job.state == PENDING and job.worker_pid is None:
                conn.execute(
                    jobs_t.update()
                    .where(jobs_t.c.id == job_id)
                    .values(
                        state=CANCELLED,
                        cancel_requested=1,
                        end_time=stamp,
                        update_time=stamp,
                        error=json.dumps({"code": CODE_CANCELLED, "message": "cancelled before it started"}),
                    )
                )
                self._event(conn, job_id, "state", "cancelled before it started", {"state": CANCELLED})
            else:
                conn.execute(jobs_t.update().where(jobs_t.c.id == job_id).values(cancel_requested=1, update_time=stamp))
                self._event(conn, job_id, "state", "cancel requested", {"state": CANCELLING})
        return self.get_job(tenant, job_id)

    def _locked_job(self, conn: Connection, tenant: str | None, job_id: str) -> Job:
        query = _owned(jobs_t, job_id, tenant)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return _job(_first(conn, query, f"tuningJobs/{job_id}"))

    # -- what workers and the scheduler write ------------------------------------------------------

    def update_job(self, job_id: str, *, message: str | None = None, **values: Any) -> Job:
        """Set columns of a job (no tenant check: workers and the scheduler), with an optional state event."""
        values["update_time"] = now()
        if values.get("state") in ENDED:
            values.setdefault("end_time", values["update_time"])
        with self._write() as conn:
            conn.execute(jobs_t.update().where(jobs_t.c.id == job_id).values(**_encode(values)))
            if message is not None or "state" in values:
                data = {"state": values["state"]} if "state" in values else {}
                if values.get("error"):
                    data["error"] = values["error"]
                self._event(conn, job_id, "state", message, data)
        return self.get_job(None, job_id)

    def claim_job(self, job_id: str, owner: str, pid: int | None, *, attempt: bool = False) -> Job:
        """Record that ``owner`` runs the job (worker ``pid``, or None: about to start one), which is now RUNNING;
        ``attempt`` counts the run, before it starts, so that a run that cannot record its end still counts.
        A job that has ended (cancelled before it started, ended by a fast worker) is left as it is."""
        with self._write() as conn:
            job = self._locked_job(conn, None, job_id)
            stamp = now()
            conn.execute(
                jobs_t.update()
                .where(jobs_t.c.id == job_id, jobs_t.c.state.in_([PENDING, RUNNING]))
                .values(
                    state=RUNNING,
                    worker_pid=pid,
                    worker_owner=owner,
                    start_time=job.start_time or stamp,
                    update_time=stamp,
                    attempts=job.attempts + int(attempt),
                )
            )
        return self.get_job(None, job_id)

    def end_job(
        self,
        job_id: str,
        state: str,
        *,
        message: str,
        error: dict[str, Any] | None = None,
        tuned: TunedModel | None = None,
        **values: Any,
    ) -> Job:
        """End the job in one transaction: ``state`` (SUCCEEDED with its ``tuned`` model, FAILED, CANCELLED), or
        CANCELLED whatever was asked if a cancel was requested first: a cancel accepted before the end always wins.
        A job that has ended already is returned as it is."""
        with self._write() as conn:
            job = self._locked_job(conn, None, job_id)
            if not job.has_ended:
                if job.cancel_requested and state != CANCELLED:
                    state, tuned, values = CANCELLED, None, {}
                    error = {"code": CODE_CANCELLED, "message": "cancelled on request"}
                    message = f"cancelled (the cancel came before the job could end: {message})"
                stamp = now()
                row = {"state": state, "error": error, "end_time": stamp, "update_time": stamp, "worker_pid": None}
                if tuned is not None:
                    if conn.execute(select(models_t.c.id).where(models_t.c.id == tuned.id)).first() is None:
                        conn.execute(models_t.insert().values(**vars(tuned)))
                    row["tuned_model_id"] = tuned.id
                conn.execute(jobs_t.update().where(jobs_t.c.id == job_id).values(**_encode({**row, **values})))
                self._event(conn, job_id, "state", message, {"state": state, **({"error": error} if error else {})})
        return self.get_job(None, job_id)

    def give_back_attempt(self, job_id: str, message: str) -> None:
        """The worker stopped at a checkpoint because its server stopped: that run is not a failed attempt."""
        with self._write() as conn:
            conn.execute(
                jobs_t.update()
                .where(jobs_t.c.id == job_id, jobs_t.c.attempts > 0)
                .values(attempts=jobs_t.c.attempts - 1, update_time=now())
            )
            self._event(conn, job_id, "state", message, None)

    def runnable_jobs(self, owners: list[str]) -> list[Job]:
        """Jobs a scheduler may start, oldest first: RUNNING ones that lost their worker come before PENDING
        ones. ``owners`` are the worker owners the caller may take over (never the embedded SDK's)."""
        query = (
            select(jobs_t)
            .where(
                jobs_t.c.state.in_([PENDING, RUNNING]),
                or_(jobs_t.c.worker_owner.is_(None), jobs_t.c.worker_owner.in_(owners)),
            )
            .order_by(jobs_t.c.seq)
        )
        with self._read() as conn:
            found = [_job(row) for row in conn.execute(query)]
        return sorted(found, key=lambda job: (job.state != RUNNING, job.seq))

    def ended_job_ids(self, job_ids: list[str]) -> list[str]:
        """Those of ``job_ids`` whose job has ended (unknown ids are not)."""
        query = select(jobs_t.c.id).where(jobs_t.c.id.in_(job_ids), jobs_t.c.state.in_(sorted(ENDED)))
        with self._read() as conn:
            return [row.id for row in conn.execute(query)]

    def add_event(self, job_id: str, type: str, message: str | None = None, data: dict[str, Any] | None = None) -> None:
        with self._write() as conn:
            self._event(conn, job_id, type, message, data)

    @staticmethod
    def _event(conn: Connection, job_id: str, type: str, message: str | None, data: dict[str, Any] | None) -> None:
        conn.execute(
            events_t.insert().values(
                job_id=job_id, time=now(), type=type, message=message, data=json.dumps(data) if data else None
            )
        )

    def events(self, tenant: str | None, job_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """The job's events after its event ``after``, oldest first (NotFoundError for another tenant). An event's
        ``id`` is its number within its job (1, 2, ...): ids tell a tenant nothing about other tenants' activity."""
        self.get_job(tenant, job_id)
        query = select(events_t).where(events_t.c.job_id == job_id).order_by(events_t.c.seq).offset(after).limit(limit)
        with self._read() as conn:
            rows = [_decode(row) for row in conn.execute(query)]
        return [
            {
                "id": after + number,
                "createTime": row["time"],
                "type": row["type"],
                **({"message": row["message"]} if row["message"] else {}),
                **({"data": row["data"]} if row["data"] else {}),
            }
            for number, row in enumerate(rows, start=1)
        ]

    # -- files and tuned models: rows owned by a tenant ----------------------------------------------

    def add_file(self, record: StoredFile) -> StoredFile:
        with self._write() as conn:
            conn.execute(files_t.insert().values(**_encode(vars(record))))
        return record

    def get_file(self, tenant: str | None, file_id: str) -> StoredFile:
        return StoredFile(**self._get(files_t, file_id, tenant, "files"))

    def list_files(self, tenant: str) -> list[StoredFile]:
        return [StoredFile(**row) for row in self._list(files_t, tenant)]

    def delete_file(self, tenant: str, file_id: str) -> StoredFile:
        """Forget the file (the caller removes its bytes); jobs that used it keep their own copy's path."""
        record = self.get_file(tenant, file_id)
        self._delete(files_t, file_id)
        return record

    def add_tuned_model(self, record: TunedModel) -> TunedModel:
        """Record a tuned model; recording the same id again (a retried worker) changes nothing."""
        with self._write() as conn:
            if conn.execute(select(models_t.c.id).where(models_t.c.id == record.id)).first() is None:
                conn.execute(models_t.insert().values(**vars(record)))
        return record

    def get_tuned_model(self, tenant: str | None, model_id: str) -> TunedModel:
        return TunedModel(**self._get(models_t, model_id, tenant, "models"))

    def list_tuned_models(self, tenant: str) -> list[TunedModel]:
        return [TunedModel(**row) for row in self._list(models_t, tenant)]

    def every_tuned_model(self) -> list[TunedModel]:
        """Every tenant's tuned models (the vLLM host loads those of its base as adapters), oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(models_t).order_by(models_t.c.create_time))
            return [TunedModel(**_decode(row)) for row in rows]

    def delete_tuned_model(self, tenant: str, model_id: str) -> TunedModel:
        """Forget the tuned model (the caller removes its directory); its job keeps its record."""
        record = self.get_tuned_model(tenant, model_id)
        self._delete(models_t, model_id)
        return record

    def _get(self, t: TableClause, key: str, tenant: str | None, collection: str) -> dict[str, Any]:
        with self._read() as conn:
            return _decode(_first(conn, _owned(t, key, tenant), f"{collection}/{key}"))

    def _list(self, t: TableClause, tenant: str) -> list[dict[str, Any]]:
        """The tenant's rows, newest first."""
        query = select(t).where(t.c.tenant == tenant).order_by(t.c.create_time.desc())
        with self._read() as conn:
            return [_decode(row) for row in conn.execute(query)]

    def _delete(self, t: TableClause, key: str) -> None:
        with self._write() as conn:
            conn.execute(t.delete().where(t.c.id == key))

    # -- API keys ----------------------------------------------------------------------------------

    def create_key(self, tenant: str) -> str:
        """A new API key for ``tenant``: ``tk_<id>_<secret>``. Only the secret's SHA-256 is stored."""
        if not tenant or len(tenant) > 128 or not tenant.replace("-", "").replace("_", "").isalnum():
            raise JobError(f"tenant {tenant!r}: expected 1 to 128 letters, digits, '-' or '_'")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        with self._write() as conn:
            conn.execute(keys_t.insert().values(id=key_id, tenant=tenant, hash=key_hash(secret), create_time=now()))
        return f"tk_{key_id}_{secret}"

    def tenant_for_key(self, key: str) -> str | None:
        """The key's tenant, or None. The secret is compared in constant time."""
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != "tk":
            return None
        with self._read() as conn:
            row = conn.execute(select(keys_t.c.tenant, keys_t.c.hash).where(keys_t.c.id == parts[1])).first()
        expected = row.hash if row else key_hash("")
        matched = hmac.compare_digest(expected, key_hash(parts[2]))
        return row.tenant if row and matched else None

    def has_keys(self) -> bool:
        with self._read() as conn:
            return bool(conn.execute(select(func.count()).select_from(keys_t)).scalar())

    def delete_keys(self, tenant: str) -> int:
        with self._write() as conn:
            return conn.execute(keys_t.delete().where(keys_t.c.tenant == tenant)).rowcount
