"""Every error the service answers, in Google's JSON shape.

    {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT", "details": [...]}}

Bad requests (FastAPI's validation errors, normally 422) are 400 and name every field at fault in a
``google.rpc.BadRequest`` detail; dataset problems add their line. ``TuneryError`` subclasses map by
class (``tunery.errors.http_status``, the one table): ``NotFoundError`` 404, ``ConflictError`` 409,
``ResourceExhaustedError`` 429 with ``Retry-After``, ``ServingError`` its ``code`` (503 unavailable, 504 timed
out), every other one (``ConfigError``, ``DatasetError``, ``ModelError``, ``JobError``) 400.
A full disk (``DiskFullError``, or an ``OSError`` ENOSPC / SQLite's "database or disk is full" from anywhere) is
507 ``RESOURCE_EXHAUSTED`` naming the disk and its free space; a job store that cannot be reached (the database
restarting) is 503 with ``Retry-After``. Anything else is a bug: 500 with a generic message,
the traceback logged.
"""

from __future__ import annotations

import http
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tunery.errors import (
    DatasetError,
    ResourceExhaustedError,
    TuneryError,
    disk_full,
    http_status,
    problems_message,
)
from tunery.settings import tunery_home

log = logging.getLogger("tunery.api")
F = TypeVar("F", bound=Callable[..., Any])

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

# google.rpc.Code names by HTTP status, as Google's APIs answer them
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    507: "RESOURCE_EXHAUSTED",  # google.rpc.Code: "perhaps the entire file system is out of space"
}


class ApiError(HTTPException):
    """An HTTP error raised by the service itself, with optional Google-style ``details``."""

    def __init__(
        self,
        code: int,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, message, headers)
        self.details = details


def invalid(problems: Iterable[tuple[str, str]], what: str = "request") -> ApiError:
    """400 naming every ``(field, message)`` at fault."""
    found = list(problems)
    return ApiError(400, problems_message(found, what), bad_request({"field": f, "description": m} for f, m in found))


def error_body(code: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``{"error": {...}}`` body for an HTTP status."""
    status = STATUS_NAMES.get(code) or _status_name(code)
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def _status_name(code: int) -> str:
    try:
        return http.HTTPStatus(code).name
    except ValueError:
        return "UNKNOWN"


def error_response(
    code: int, message: str, details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=code, headers=headers)


def bad_request(violations: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ``google.rpc.BadRequest`` detail: ``fieldViolations`` of ``{field, description[, line]}``."""
    return [{"@type": BAD_REQUEST, "fieldViolations": list(violations)}]


def status_for(exc: TuneryError) -> int:
    """The HTTP status of ``exc``: ``tunery.errors.HTTP_STATUSES``, the model host's own (503, 504), else 400."""
    return http_status(exc)


def field_name(loc: Iterable[Any]) -> str:
    """``("body", "contents", 0, "role")`` → ``contents[0].role``, the way the dataset parser names fields."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "request"


def _validation_violations(exc: RequestValidationError) -> list[dict[str, Any]]:
    violations = []
    for error in exc.errors():
        loc = list(error.get("loc", ()))
        where = loc.pop(0) if loc and loc[0] in ("body", "query", "path", "header", "cookie") else None
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            violations.append(
                {"field": "body", "description": f"invalid JSON at character {loc[0] if loc else 0}: {reason}"}
            )
            continue
        key = bool(loc) and loc[-1] == "[key]"
        field = field_name(loc[:-1] if key else loc) if loc else (where or "request")
        if key:
            field += " (a key)"
        if where in ("query", "header", "path") and loc:
            field = f"{field} ({where})"
        violations.append({"field": field, "description": _plain(str(error.get("msg", "invalid")))})
    return violations


def _plain(message: str) -> str:
    return message.removeprefix("Value error, ")


def also_check(check: Callable[[Request, Any], list[tuple[str, str]]]) -> Callable[[F], F]:
    """Mark a route whose schema errors come with ``check(request, body)``'s ``(field, message)`` problems
    (references the handler would resolve, say), so that a client fixes everything in one round."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, "also_check", check)  # noqa: B010 - a function attribute mypy cannot see
        return endpoint

    return mark


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = [(v["field"], v["description"]) for v in _validation_violations(exc)]
    check = getattr(getattr(request.scope.get("route"), "endpoint", None), "also_check", None)
    if check is not None:
        named = {field for field, _ in found}
        found += [p for p in await run_in_threadpool(check, request, exc.body) if p[0] not in named]
    error = invalid(found)
    return error_response(400, error.detail, error.details)


def error_info(exc: TuneryError) -> dict[str, Any]:
    """A ``google.rpc.ErrorInfo`` detail whose ``reason`` is the ``tunery.errors`` class, for clients to raise."""
    return {"@type": ERROR_INFO, "reason": type(exc).__name__, "domain": "tunery"}


async def tunery_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TuneryError)
    code = status_for(exc)
    if isinstance(exc, DatasetError):
        violations = [_problem(p) for p in exc.problems]
        details = [*(bad_request(violations) if violations else []), error_info(exc)]
        return error_response(code, _no_server_paths(request, exc.args[0] if exc.args else str(exc)), details)
    headers = {"Retry-After": retry_after(exc.retry_after)} if isinstance(exc, ResourceExhaustedError) else None
    return error_response(code, _no_server_paths(request, str(exc)), [error_info(exc)], headers)


def retry_after(seconds: float) -> str:
    """``Retry-After``'s value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _no_server_paths(request: Request, message: str) -> str:
    """``message`` without the server's own directories: ``TUNERY_HOME/...`` and paths under the data root as the
    client names them (a model that cannot be loaded, say); paths a request named elsewhere are left as sent."""
    from tunery.api.paths import hide_server_paths

    root = getattr(getattr(request.app.state, "settings", None), "data_root", None)
    return hide_server_paths(message, root, others=False)


def _problem(problem: Any) -> dict[str, Any]:
    """A dataset ``Problem`` (or its dict form) as a field violation that keeps its line."""
    data = problem.to_dict() if hasattr(problem, "to_dict") else dict(problem)
    violation: dict[str, Any] = {"field": data.get("field", ""), "description": data.get("message", "")}
    if data.get("line"):
        violation["line"] = data["line"]
    if data.get("severity", "error") != "error":
        violation["severity"] = data["severity"]
    return violation


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else http.HTTPStatus(exc.status_code).phrase
    return error_response(exc.status_code, message, getattr(exc, "details", None), getattr(exc, "headers", None))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    full = disk_full(exc, tunery_home(), "TUNERY_HOME")
    if full is not None:  # an upload or a create that ran out of disk: the client is told, not a bare 500
        log.warning("%s %s: %s", request.method, request.url.path, full)
        return await tunery_error(request, full)
    if isinstance(exc, OperationalError | InterfaceError):  # the database is down or restarting
        log.warning("%s %s: the job store is unavailable: %s", request.method, request.url.path, exc)
        return error_response(503, "the job store is unavailable; try again shortly", headers={"Retry-After": "2"})
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the server log has the details")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into Google's JSON shape."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(TuneryError, tunery_error)
    app.add_exception_handler(HTTPException, http_error)
    # the machine's errors (a full disk, the database away) by class too, so they are answered without the
    # traceback the catch-all handler's middleware logs for a bug
    for machine_error in (OSError, OperationalError, InterfaceError):
        app.add_exception_handler(machine_error, unexpected_error)
    app.add_exception_handler(Exception, unexpected_error)
