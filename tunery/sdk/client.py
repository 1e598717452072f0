"""Remote mode: the SDK over a tunery server's REST API.

    import tunery
    tunery.init(api_endpoint="http://tuning.internal:8000", api_key="tk_...")
    job = tunery.sft.train(source_model="smollm2-135m-instruct", train_dataset="train.jsonl")  # on the server

After ``init``, ``sft.train``, ``TuningJob`` and ``GenerativeModel`` call the server. Without ``init``,
the environment decides: ``TUNERY_API_ENDPOINT`` (and ``TUNERY_API_KEY``) make the SDK remote, and
with neither the SDK stays embedded (job store and models on this machine). ``Client`` is the REST
client underneath; errors come back as ``tunery.errors`` classes, never as HTTP codes.

Nothing here imports torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from tunery import settings
from tunery.errors import (
    APIConnectionError,
    AuthenticationError,
    ConfigError,
    DatasetError,
    JobError,
    ModelError,
    NotFoundError,
    ResourceExhaustedError,
    ServingError,
    TuneryError,
    error_for_status,
)

ENDPOINT_ENV = settings.API_ENDPOINT_ENV
KEY_ENV = settings.API_KEY_ENV
TIMEOUT = 60.0
"""Seconds to connect, read, or write one request (generation on a busy server can take a while)."""
UPLOAD_TIMEOUT = 600.0
"""Seconds to wait for an upload's answer: the server validates and tokenizes the whole file first."""
RETRIES = 3
"""Further attempts, after a connection error, of a request that is safe to repeat (and of any request the
server refused with 429, which started nothing)."""
MAX_RETRY_AFTER = 30.0
"""The longest the client waits, per refusal, for a 429's ``Retry-After`` before asking again."""
TIMEOUT_HEADER = "X-Request-Timeout"
STREAM_READ_TIMEOUT = 30.0
"""Seconds of silence on an event stream before the client checks the job and reconnects."""
RECONNECT_SECONDS = 60.0
"""How long an event stream keeps trying to reconnect to an unreachable server."""
EVENTS_PAGE = 1000
"""Events asked for per request (the server's most)."""
ENDED_STATES = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"})


# --- the SDK's choice: embedded or remote ---------------------------------------------------------------


@dataclass
class _State:
    client: Client | None = None
    initialized: bool = False  # init() was called: the environment no longer decides
    env: tuple[str, str] | None = None  # the environment values ``client`` was made from


_state = _State()


def init(api_endpoint: str | None = None, api_key: str | None = None) -> None:
    """Make the SDK talk to the tunery server at ``api_endpoint`` (``http://host:port``), with ``api_key``.

    Either argument left out is read from ``TUNERY_API_ENDPOINT`` / ``TUNERY_API_KEY``. With no endpoint
    at all, the SDK is embedded: jobs run on this machine, as without ``init``.
    """
    env_endpoint, env_key = settings.api_client()
    endpoint = api_endpoint or env_endpoint or None
    key = api_key or env_key or None
    client = Client(endpoint, key) if endpoint else None  # a bad endpoint raises before the state changes
    reset()
    _state.client, _state.initialized = client, True


def current() -> Client | None:
    """The client of the server the SDK talks to, or None when it is embedded.

    Set by ``init``; without it, made from ``TUNERY_API_ENDPOINT`` and ``TUNERY_API_KEY`` when set.
    """
    if _state.initialized:
        return _state.client
    env = settings.api_client()
    if not env[0]:
        return None
    if _state.client is None or _state.env != env:
        if _state.client is not None:
            _state.client.close()
        _state.client, _state.env = Client(env[0], env[1] or None), env
    return _state.client


def reset() -> None:
    """Forget ``init``: the environment decides again (tests use this between cases)."""
    if _state.client is not None:
        _state.client.close()
    _state.client, _state.initialized, _state.env = None, False, None


# --- names -------------------------------------------------------------------------------------------


def job_id(name: str) -> str:
    """``tuningJobs/ID`` or ``ID`` → ``ID``."""
    return _segment(name.strip().rstrip("/").rsplit("/", 1)[-1])


def file_id(name: str) -> str:
    """``files/ID`` or ``ID`` → ``ID``."""
    return _segment(name.strip().rstrip("/").rsplit("/", 1)[-1])


def model_id(name: str) -> str:
    """``models/ID``, a bare id (a tuned model's or a catalog id), or an endpoint URL
    (``http://host/v1/models/ID:generateContent``) → ``ID``. A local path is not a name the server knows."""
    name = name.strip()
    if name.startswith(("http://", "https://")):
        path = urlsplit(name).path
        if "/models/" in path:
            return _segment(path.split("/models/", 1)[1].split(":", 1)[0].strip("/"))
    elif name.startswith("models/"):
        return _segment(name.removeprefix("models/"))
    elif "/" not in name and "\\" not in name:
        return _segment(name)
    raise ModelError(
        f"model {name!r}: a tunery server names models as models/ID (a tuned model) or by catalog id, "
        "not by a local path; call tunery.init() with no endpoint to use local models"
    )


def _segment(value: str) -> str:
    if not value or "/" in value:
        raise NotFoundError(f"{value!r} is not a resource id")
    return quote(value, safe="")


# --- the REST client ---------------------------------------------------------------------------------


class Client:
    """A tunery server's REST API (``/v1``), with bearer-key auth, timeouts, retries and error mapping.

    Requests that are safe to repeat (reads, cancel, generation, and a job create with its
    ``Idempotency-Key``) are retried after a connection error; an unreachable server raises
    ``APIConnectionError`` naming the endpoint. A request the server refused with 429 (it started nothing) is
    sent again after its ``Retry-After``, up to ``retries`` times, then raises ``ResourceExhaustedError``.
    Generation calls tell the server the client's ``timeout`` (``X-Request-Timeout``).
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str | None = None,
        *,
        timeout: float = TIMEOUT,
        retries: int = RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        endpoint = endpoint.strip().rstrip("/").removesuffix("/v1")
        if not endpoint.startswith(("http://", "https://")) or not urlsplit(endpoint).netloc:
            raise ConfigError(f"api_endpoint {endpoint!r}: expected http://HOST:PORT or https://HOST")
        from tunery import __version__

        headers = {"User-Agent": f"tunery-sdk/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.endpoint = endpoint
        self.retries = retries
        self.timeout = timeout
        self._headers, self._transport = headers, transport
        self._http = self._open()

    def _open(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.endpoint, headers=self._headers, timeout=self.timeout, transport=self._transport
        )

    @property
    def http(self) -> httpx.Client:
        """The connection pool; opened again after ``close()``, since a job handle may outlive ``init``/``reset``."""
        if self._http.is_closed:
            self._http = self._open()
        return self._http

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r})"

    # -- plumbing ---------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry: bool = False,
        source: str | None = None,
        invalid: type[TuneryError] = ConfigError,
        **kwargs: Any,
    ) -> Any:
        """Send a request and return its JSON body; ``retry`` repeats it after connection errors. A 429 (the
        server started nothing) is sent again after its ``Retry-After``, at most ``retries`` times and
        ``MAX_RETRY_AFTER`` s a wait, then raises ``ResourceExhaustedError``. A 400 is ``invalid`` (or a
        ``DatasetError`` naming lines of ``source``, the local file uploaded)."""
        attempts = 1 + (self.retries if retry else 0)
        failures = refusals = 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failures += 1
                if failures >= attempts:
                    raise self._unreachable(exc) from None
                time.sleep(_backoff(failures - 1))
                continue
            if response.status_code == 429 and refusals < self.retries and "files" not in kwargs:
                refusals += 1
                time.sleep(retry_after(response, _backoff(refusals)))
                continue
            if response.is_error:
                raise error_from_response(response, self.endpoint, source, invalid)
            return response.json() if response.content else {}

    def _unreachable(self, exc: Exception) -> APIConnectionError:
        reason = str(exc) or type(exc).__name__
        return APIConnectionError(f"cannot reach the tunery server at {self.endpoint}: {reason}")

    # -- files ------------------------------------------------------------------------------------------

    def upload_file(self, path: str | Path, model: str | None = None, max_length: int | None = None) -> dict[str, Any]:
        """Upload a JSONL dataset; the server checks it (with ``model``'s tokenizer, truncating at
        ``max_length``) and returns the file resource. Problems raise ``DatasetError`` by line and field."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        form = {k: str(v) for k, v in (("model", model), ("maxLength", max_length)) if v is not None}
        timeout = httpx.Timeout(self.timeout, read=UPLOAD_TIMEOUT)
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/jsonl")}
            return self._request("POST", "/v1/files", files=files, data=form, timeout=timeout, source=str(path))

    def list_files(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/files", retry=True).get("files", [])

    def get_file(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/files/{file_id(name)}", retry=True)

    def delete_file(self, name: str) -> None:
        self._request("DELETE", f"/v1/files/{file_id(name)}")

    # -- tuning jobs ------------------------------------------------------------------------------------

    def create_job(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Create a tuning job. With ``idempotency_key`` a lost answer is asked for again under the same key,
        and the server returns the job the first attempt made: a retry never makes a second job."""
        if idempotency_key is None:
            return self._request("POST", "/v1/tuningJobs", json=body)
        headers = {"Idempotency-Key": idempotency_key}
        return self._request("POST", "/v1/tuningJobs", json=body, headers=headers, retry=True)

    def get_job(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/tuningJobs/{job_id(name)}", retry=True)

    def list_jobs(
        self, state: str | None = None, labels: dict[str, str] | None = None, page_size: int = 100
    ) -> list[dict[str, Any]]:
        """Every job (newest first) in ``state`` with all of ``labels``, following the pages."""
        params: list[tuple[str, str | int]] = [("pageSize", page_size)]
        if state:
            params.append(("state", state))
        params += [("label", f"{k}:{v}") for k, v in (labels or {}).items()]
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self._request("GET", "/v1/tuningJobs", params=params + _token(token), retry=True)
            found += page.get("tuningJobs", [])
            token = page.get("nextPageToken")
            if not token:
                return found

    def cancel_job(self, name: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/tuningJobs/{job_id(name)}:cancel", retry=True)

    def events(self, job: str, after: int = 0) -> list[dict[str, Any]]:
        """The job's events after event ``after``, oldest first (every page of them)."""
        found: list[dict[str, Any]] = []
        while True:
            params = {"after": after, "pageSize": EVENTS_PAGE}
            page = self._request("GET", f"/v1/tuningJobs/{job_id(job)}/events", params=params, retry=True)
            batch = page.get("events", [])
            if not batch:
                return found
            found += batch
            after = int(batch[-1]["id"])

    def stream_events(self, job: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """The job's events after event ``after`` as they happen (Server-Sent Events), until the job has ended.

        A dropped or silent connection is opened again with ``Last-Event-ID``, so no event is lost or
        repeated; ``APIConnectionError`` once the server has been unreachable for ``RECONNECT_SECONDS``.
        """
        path = f"/v1/tuningJobs/{job_id(job)}/events"
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        last, failing_since, failures = after, None, 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last else {}
            params: dict[str, str | int] = {"alt": "sse", "after": last}
            try:
                with self.http.stream("GET", path, params=params, headers=headers, timeout=timeout) as response:
                    if response.is_error:
                        response.read()
                        raise error_from_response(response, self.endpoint)
                    failing_since, failures = None, 0
                    for event in parse_sse(response.iter_lines()):
                        last = max(last, int(event.get("id", last)))
                        yield event
            except httpx.ReadTimeout:
                pass  # a quiet stream: check on the job below, then listen again
            except httpx.TransportError as exc:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > RECONNECT_SECONDS:
                    raise self._unreachable(exc) from None
                time.sleep(_backoff(failures))
                failures += 1
                continue
            if self.get_job(job)["state"] in ENDED_STATES:  # the server ends the stream when the job ends
                yield from self.events(job, after=last)  # anything written after the stream closed
                return

    # -- models -----------------------------------------------------------------------------------------

    def generate_content(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """Gemini's ``generateContent`` on a tuned model (``models/ID``) or a catalog base model; the server
        is told the client's timeout (``X-Request-Timeout``), so it gives up when the client would."""
        path = f"/v1/models/{model_id(model)}:generateContent"
        return self._request(
            "POST", path, json=body, retry=True, invalid=DatasetError, headers=self._deadline_headers()
        )

    def count_tokens(self, model: str, body: dict[str, Any]) -> int:
        path = f"/v1/models/{model_id(model)}:countTokens"
        headers = self._deadline_headers()
        answer = self._request("POST", path, json=body, retry=True, invalid=DatasetError, headers=headers)
        return int(answer["totalTokens"])

    def _deadline_headers(self) -> dict[str, str]:
        return {TIMEOUT_HEADER: f"{self.timeout:g}"}

    def list_models(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self._request("GET", "/v1/models", params=_token(token), retry=True)
            found += page.get("models", [])
            token = page.get("nextPageToken")
            if not token:
                return found

    def get_model(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{model_id(name)}", retry=True)

    def delete_model(self, name: str) -> None:
        self._request("DELETE", f"/v1/models/{model_id(name)}")


def _token(token: str | None) -> list[tuple[str, str | int]]:
    return [("pageToken", token)] if token else []


def _backoff(attempt: int) -> float:
    return min(0.25 * 2**attempt, 4.0)


def retry_after(response: httpx.Response, default: float) -> float:
    """Seconds to wait before sending a refused (429) request again: its ``Retry-After`` (seconds), at most
    ``MAX_RETRY_AFTER``; ``default`` when it has none the client can read."""
    raw = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(raw)
    except ValueError:
        return default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if seconds == seconds else default


# --- server-sent events ------------------------------------------------------------------------------


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events from Server-Sent Events lines: each ``data:`` block is one event's JSON; ``id:`` fills in
    a missing ``id``; comments (keep-alives) are skipped, and so is a block the stream cut short."""
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if not line:
            if data:
                event = json.loads("\n".join(data))
                if isinstance(event, dict):
                    if "id" not in event and event_id and event_id.isdigit():
                        event["id"] = int(event_id)
                    yield event
            data, event_id = [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


# --- errors ------------------------------------------------------------------------------------------


def error_from_response(
    response: httpx.Response, endpoint: str, source: str | None = None, invalid: type[TuneryError] = ConfigError
) -> TuneryError:
    """The ``tunery.errors`` class for an error answer.

    A 400 that names problems in a dataset (by line, or the file as a whole) is a ``DatasetError`` listing
    each, ``source`` being the local file they are in; other 400s are ``invalid`` (``ConfigError``, or
    ``DatasetError`` for a generation request, as embedded).
    """
    error = _error_body(response)
    status = response.status_code
    message = str(error.get("message") or response.reason_phrase or f"HTTP {status}")
    if status in (400, 422):
        violations = _violations(error.get("details"))
        in_file = any(v.get("line") or v.get("field") == "file" for v in violations)
        if in_file or invalid is DatasetError:
            return DatasetError(message, _problems(violations, source))
        return _REASONS.get(_reason(error.get("details")), invalid)(message)
    if status in (401, 403):
        return AuthenticationError(f"{message} (the tunery server at {endpoint}; check the API key)")
    found = error_for_status(status, message)  # 404, 409, 429, 507: tunery.errors.HTTP_STATUSES
    if isinstance(found, ResourceExhaustedError):
        found.retry_after = retry_after(response, 1.0)
    if found is not None:
        return found
    if status == 413:
        return ConfigError(message)
    if status in (502, 503, 504):
        return ServingError(message, status)
    return TuneryError(f"the tunery server at {endpoint} answered {status}: {message}")


_REASONS: dict[str | None, type[TuneryError]] = {"ModelError": ModelError, "JobError": JobError}


def _reason(details: Any) -> str | None:
    """The ``reason`` of a ``google.rpc.ErrorInfo`` detail: the server's ``tunery.errors`` class name."""
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            return detail.get("reason")
    return None


def _error_body(response: httpx.Response) -> dict[str, Any]:
    """``{"error": {...}}``, FastAPI's own ``{"detail": ...}``, or the text of the answer."""
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text.strip()[:500]}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    if isinstance(body, dict) and "detail" in body:
        return {"message": str(body["detail"])}
    return {"message": str(body)[:500]}


def _violations(details: Any) -> list[dict[str, Any]]:
    """The field violations in Google's ``details`` (``google.rpc.BadRequest``: ``{"fieldViolations": [{"field",
    "description", "line"?, "severity"?}]}``), or details that are violations themselves."""
    found: list[dict[str, Any]] = []
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if isinstance(detail.get("fieldViolations"), list):
            found += [v for v in detail["fieldViolations"] if isinstance(v, dict)]
        elif "field" in detail:
            found.append(detail)
    return found


def _problems(violations: list[dict[str, Any]], source: str | None) -> list[Any]:
    """Violations as the problems ``DatasetError`` holds: ``FILE:LINE: field: message`` for a file's
    problems (``source``), ``field: message`` for a request's."""
    from tunery.data.validation import Problem
    from tunery.serving.gemini import RequestProblem

    found: list[Any] = []
    for v in violations:
        field = str(v.get("field") or "request")
        message = str(v.get("description") or v.get("message") or "")
        severity: Literal["error", "warning"] = "warning" if v.get("severity") == "warning" else "error"
        line: int = v["line"] if isinstance(v.get("line"), int) else 0
        if source is not None or line:
            found.append(Problem(source or "request", line, field, message, severity))
        else:
            found.append(RequestProblem("request", 0, field, message, severity))
    return found
