"""google-genai's ``files.upload``: Google's resumable upload protocol, onto the same checks as ``POST /v1/files``.

    POST /upload/v1/files                 X-Goog-Upload-Command: start, X-Goog-Upload-Header-Content-Length: N
        → 200, X-Goog-Upload-URL: /upload/v1/files?upload_id=..., X-Goog-Upload-Status: active
    POST /upload/v1/files?upload_id=...   X-Goog-Upload-Command: upload[, finalize], X-Goog-Upload-Offset: K
        → active (more to come) or final, with {"file": {...}} once the bytes are checked and kept

The start request needs an API key; the upload id it hands out (unguessable, for that tenant only, for
``SESSION_SECONDS``) is the credential of the byte transfer, which google-genai sends without the key. The
bytes go to a file under the uploads directory as they arrive, never into memory; at ``finalize`` the dataset
checker parses and counts every line exactly as it does for ``POST /v1/files``, and a file with problems is
not kept (400 naming each line and field).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field, StringConstraints, ValidationError
from starlette.concurrency import run_in_threadpool

from tunery.api import kept_files, limits
from tunery.api.deps import get_checker, public_url
from tunery.api.errors import ApiError, field_name, http_error, invalid, tunery_error
from tunery.api.schemas import DisplayName, ErrorResponse, File, GeminiRequest
from tunery.api.uploads import Upload
from tunery.errors import TuneryError
from tunery.jobs.store import StoredFile

router = APIRouter(tags=["files"])

SESSION_SECONDS = 3600.0
MAX_SESSIONS = 256  # open uploads, all tenants together
Version = Annotated[str, Path(pattern=r"^v1(beta1?)?$", description="v1, v1beta or v1beta1")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid upload: every problem, by line and field"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key, or an unknown upload id"},
    413: {"model": ErrorResponse, "description": "The file is larger than the server takes"},
}


class FileMetadata(GeminiRequest):
    name: Annotated[str, StringConstraints(max_length=limits.MAX_URI_LENGTH)] | None = Field(
        None, description="Ignored: the server names the file"
    )
    display_name: DisplayName | None = None
    mime_type: Annotated[str, StringConstraints(max_length=255)] | None = None
    size_bytes: int | Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")] | None = None


class StartUploadRequest(GeminiRequest):
    """The resumable upload's start: the file's metadata (all optional)."""

    file: FileMetadata | None = None


@dataclass
class Session:
    tenant: str
    path: FsPath
    display_name: str
    size: int
    expires: float
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _sessions(request: Request) -> dict[str, Session]:
    state = request.app.state
    if not hasattr(state, "upload_sessions"):
        state.upload_sessions = {}
    return state.upload_sessions


def _expire(sessions: dict[str, Session]) -> None:
    clock = time.monotonic()
    for key in [k for k, s in sessions.items() if s.expires < clock and not s.lock.locked()]:
        _discard(sessions.pop(key))


def _discard(session: Session) -> None:
    with contextlib.suppress(OSError):
        session.path.unlink()


def gemini_file(record: StoredFile, api_base: str) -> dict[str, Any]:
    """An upload as the Gemini API's ``File``: the native resource plus ``state`` and ``uri``."""
    resource = record.resource()
    return {
        **resource,
        "state": "ACTIVE",
        "source": "UPLOADED",
        "updateTime": resource["createTime"],
        "uri": f"{api_base}v1/{resource['name']}",
    }


MAX_START_BODY = 64 * 1024
START_BODY = {  # documented by hand: a byte transfer's body is the file itself, so FastAPI must not parse it
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "object",
                            "properties": {
                                "displayName": {"type": "string", "maxLength": limits.MAX_DISPLAY_NAME},
                                "mimeType": {"type": "string", "maxLength": 255},
                                "sizeBytes": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                            },
                        }
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/upload/{version}/files",
    response_model=None,
    summary="Upload a dataset (Google's resumable upload protocol)",
    responses={200: {"model": File, "description": "active: send the bytes; final: {file}"}, **ERRORS},
    openapi_extra=START_BODY,
)
async def upload_file(
    version: Version,
    request: Request,
    upload_id: Annotated[str | None, Query(max_length=128)] = None,
    x_goog_upload_protocol: Annotated[str | None, Header(max_length=32)] = None,
    x_goog_upload_command: Annotated[str | None, Header(max_length=64)] = None,
    x_goog_upload_header_content_length: Annotated[str | None, Header(max_length=20)] = None,
    x_goog_upload_file_name: Annotated[str | None, Header(max_length=1024)] = None,
    x_goog_upload_offset: Annotated[str | None, Header(max_length=20)] = None,
) -> Any:
    """Without ``upload_id``: start an upload (needs an API key). With it: the bytes, at ``X-Goog-Upload-Offset``,
    ``finalize`` on the last chunk. The body of a byte transfer is the file itself, not JSON."""
    commands = {c.strip().lower() for c in (x_goog_upload_command or "").split(",") if c.strip()}
    if upload_id is None:
        return await _start(
            request,
            await _start_body(request),
            x_goog_upload_protocol,
            commands,
            x_goog_upload_header_content_length,
            x_goog_upload_file_name,
            version,
        )
    try:
        return await _transfer(request, upload_id, commands, x_goog_upload_offset)
    except (ApiError, TuneryError) as exc:  # google-genai retries a reply without an upload status
        handler = http_error if isinstance(exc, ApiError) else tunery_error
        reply = await handler(request, exc)
        reply.headers["X-Goog-Upload-Status"] = "final"
        return reply


async def _start_body(request: Request) -> StartUploadRequest | None:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_START_BODY:
            raise ApiError(413, f"the start request's metadata is over {MAX_START_BODY} bytes; send the file after it")
    if not raw.strip():
        return None
    try:
        return StartUploadRequest.model_validate_json(bytes(raw))
    except ValidationError as exc:
        raise invalid(
            [(field_name(e["loc"]) if e["loc"] else "body", e["msg"]) for e in exc.errors(include_url=False)]
        ) from None


async def _start(
    request: Request,
    body: StartUploadRequest | None,
    protocol: str | None,
    commands: set[str],
    declared: str | None,
    file_name: str | None,
    version: str,
) -> JSONResponse:
    tenant = request.state.tenant  # the middleware authenticated it: only a byte transfer may come without a key
    problems = []
    if (protocol or "").lower() != "resumable":
        problems.append(("X-Goog-Upload-Protocol", "expected 'resumable' (or upload with POST /v1/files)"))
    if commands != {"start"}:
        problems.append(("X-Goog-Upload-Command", "expected 'start' (or an upload_id to send bytes to)"))
    metadata = (body.file if body else None) or FileMetadata.model_validate({})
    size_text = declared if declared is not None else metadata.size_bytes
    size = (
        int(size_text) if isinstance(size_text, int) or (isinstance(size_text, str) and size_text.isdigit()) else None
    )
    settings = request.app.state.settings
    if size is None:
        problems.append(("X-Goog-Upload-Header-Content-Length", "required: the file's size in bytes"))
    elif size > settings.max_upload_bytes:
        raise ApiError(413, f"file too large: the limit is {settings.max_upload_bytes} bytes")
    if problems:
        raise invalid(problems, "upload")
    sessions = _sessions(request)
    _expire(sessions)
    if len(sessions) >= MAX_SESSIONS:
        raise ApiError(
            429,
            f"too many uploads in progress (at most {MAX_SESSIONS}); finish or retry later",
            headers={"Retry-After": "10"},
        )
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    upload_id = secrets.token_urlsafe(32)
    name = metadata.display_name or FsPath((file_name or "upload.jsonl").replace("\\", "/")).name or "upload.jsonl"
    path = settings.files_dir / f".resumable-{secrets.token_hex(8)}.part"
    path.touch()
    assert size is not None
    sessions[upload_id] = Session(
        tenant, path, name[: limits.MAX_DISPLAY_NAME], size, time.monotonic() + SESSION_SECONDS
    )
    url = f"{public_url(request)}upload/{version}/files?upload_id={upload_id}"
    return JSONResponse({}, headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})


async def _transfer(request: Request, upload_id: str, commands: set[str], offset_text: str | None) -> JSONResponse:
    sessions = _sessions(request)
    session = sessions.get(upload_id)
    tenant = getattr(request.state, "tenant", None)  # set when the transfer carries a key as well
    if session is None or session.expires < time.monotonic() or tenant not in (None, session.tenant):
        raise ApiError(401, "unknown or expired upload_id: start the upload again")
    unknown = commands - {"upload", "finalize", "query", "cancel"}
    if not commands or unknown:
        raise invalid([("X-Goog-Upload-Command", "expected upload, finalize, 'upload, finalize', query or cancel")])
    async with session.lock:
        if "cancel" in commands:
            sessions.pop(upload_id, None)
            _discard(session)
            return JSONResponse({}, headers={"X-Goog-Upload-Status": "cancelled"})
        if "upload" in commands:
            if offset_text is None or not offset_text.isdigit() or int(offset_text) != session.received:
                raise invalid([("X-Goog-Upload-Offset", f"expected {session.received}, the bytes received so far")])
            await _receive(request, session)
        if "finalize" not in commands:
            return JSONResponse(
                {}, headers={"X-Goog-Upload-Status": "active", "X-Goog-Upload-Size-Received": str(session.received)}
            )
        sessions.pop(upload_id, None)
        try:
            if session.received != session.size:
                raise invalid(
                    [
                        (
                            "X-Goog-Upload-Header-Content-Length",
                            f"the upload declared {session.size} bytes and sent {session.received}",
                        )
                    ]
                )
            record = await run_in_threadpool(_check_and_keep, request, session)
        finally:
            _discard(session)
    return JSONResponse({"file": gemini_file(record, public_url(request))}, headers={"X-Goog-Upload-Status": "final"})


async def _receive(request: Request, session: Session) -> None:
    """Append the request body to the session's file, never past the size the start declared."""
    with session.path.open("ab") as fh:
        async for chunk in request.stream():
            session.received += len(chunk)
            if session.received > session.size:
                raise invalid([("X-Goog-Upload-Header-Content-Length", f"more than the {session.size} bytes declared")])
            session.digest.update(chunk)
            await run_in_threadpool(fh.write, chunk)


def _check_and_keep(request: Request, session: Session) -> StoredFile:
    upload = Upload(session.path, session.display_name, session.received, session.digest.hexdigest())
    state = request.app.state
    return kept_files.check_and_keep(upload, session.tenant, state.store, state.settings, get_checker(request))
