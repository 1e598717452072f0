"""What one request may ask of the service, and the middleware that holds requests to it.

Settings come from the environment (``ApiSettings.from_env``); tests pass their own. A JSON body is at
most ``max_body_bytes`` (1 MiB), an upload at most ``max_upload_bytes`` (``TUNERY_MAX_UPLOAD_BYTES``,
256 MiB); larger ones are 413 before the handler sees them (or as soon as the bytes cross the limit,
for a body sent without ``Content-Length``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunery import settings
from tunery.api.errors import error_response
from tunery.serving.gemini import MAX_BODY_CHARS, MAX_PARTS, MAX_TURNS, MAX_URI_LENGTH  # noqa: F401 - the API's names

MIB = 1024 * 1024
UPLOAD_PATH = "/v1/files"
RESUMABLE_UPLOAD_PREFIX = "/upload/"  # google-genai's resumable uploads (tunery.api.routes.gemini_files)
MULTIPART_OVERHEAD = 64 * 1024  # part headers and the form fields around an upload's bytes
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
MAX_PROMPT_TOKENS = 8192
MAX_DISPLAY_NAME = 128
MAX_LABELS = 64
MAX_LABEL_LENGTH = 63
MAX_ID_LENGTH = 128
MAX_EVENTS_PAGE = 1000


@dataclass(frozen=True)
class ApiSettings:
    """Where the service reads and writes, and the bounds it holds requests to."""

    data_root: Path | None = field(default_factory=settings.data_root)
    """``TUNERY_DATA_ROOT``: the only directory whose datasets and base models requests may name by path."""
    files_dir: Path = field(default_factory=settings.files_dir)
    """Uploaded files, one JSONL per file id."""
    tuned_models_dir: Path = field(default_factory=settings.tuned_models_dir)
    """Parent of every tuned model directory the service writes."""
    max_body_bytes: int = MIB
    """Largest JSON request body."""
    max_upload_bytes: int = 256 * MIB
    """Largest uploaded file (``TUNERY_MAX_UPLOAD_BYTES``)."""
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    """Longest prompt generateContent accepts, in the model's tokens."""
    key_cache_seconds: float = 1.0
    """How long "does any API key exist" is remembered before the store is asked again."""
    public_url: str | None = field(default_factory=settings.public_url)
    """``TUNERY_PUBLIC_URL``: the base of every URL the service hands out; None: the address it is bound to."""

    @classmethod
    def from_env(cls) -> ApiSettings:
        return cls(max_upload_bytes=settings.max_upload_bytes())


class BodyLimitMiddleware:
    """413 for a request body over its limit: the upload limit on ``POST /v1/files``, the JSON limit elsewhere.

    A declared ``Content-Length`` over the limit is refused before reading; otherwise the bytes are counted
    as they arrive and the read that crosses the limit raises ``HTTPException(413)``, which FastAPI passes
    through to the error handlers.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit_for(self, scope: Scope) -> int:
        path = scope["path"].rstrip("/")
        if scope["method"] == "POST" and (path == UPLOAD_PATH or path.startswith(RESUMABLE_UPLOAD_PREFIX)):
            return self.max_upload_bytes + MULTIPART_OVERHEAD
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await too_large(limit)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, too_large_message(limit))
            return message

        await self.app(scope, counted, send)


def too_large_message(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes"


def too_large(limit: int):  # noqa: ANN201 - a Response, which is an ASGI app
    return error_response(413, too_large_message(limit))
