"""Every route that generates or counts tokens goes through here: one place that resolves the model,
admits the call (``tunery.api.admission``) and awaits the model host.

    result = await generation.generate(request, tenant, model_id, body)            # GenerateContentResponse
    chunks = await generation.stream(request, tenant, model_id, body)              # admitted (or 429) now
    async for chunk in chunks: ...                                                 # its chunks
    counted = await generation.count_tokens(request, tenant, model_id, body)       # {"totalTokens": n}

``body`` is a Gemini generateContent (or countTokens) body, already checked by ``tunery.serving.gemini``
by the route (the OpenAI and Vertex routes translate their shapes into it first). The handlers are async
and the host is awaited, so a slow or stuck model host never holds a thread the control plane needs.

Each call is admitted first: past a limit it raises ``ResourceExhaustedError`` (429 with ``Retry-After``);
its deadline is the client's ``X-Request-Timeout`` (bounded by the server); a client that disconnects
cancels it and frees its slot. ``stream`` admits when awaited, so that a refusal is an HTTP status rather
than a broken stream; iterating it without ``await`` (``async for chunk in generation.stream(...)``) works
too and admits at the first chunk.

A ``fileData`` part is read here, before the model host sees it (``with_media``): ``files/{id}`` names one of
the caller's media uploads (never another tenant's, never a dataset), any other URI a file under the data
root; a remote URL is not fetched. Its bytes go to the host as the part's ``inlineData``, typed by their magic
bytes, so the host never opens a path a request names.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tunery.api import admission
from tunery.api.deps import get_host, public_url, still_authorized
from tunery.api.errors import ApiError, invalid
from tunery.api.limits import ApiSettings
from tunery.api.paths import resolve_under
from tunery.api.uploads import MEDIA_BYTES
from tunery.data.formats import modality_of
from tunery.data.media import normalize_mime, sniff
from tunery.errors import ConfigError, ModelError, NotFoundError, ServingError
from tunery.jobs.store import Store
from tunery.models.catalog import CATALOG
from tunery.models.tuned import checkpoint_dir, split_checkpoint
from tunery.serving.openai import STORED_TYPE

OWN_FILE = re.compile(r"v1(beta1?)?/files/(?P<id>[^/?#]+)")
MAX_REQUEST_MEDIA_BYTES = 64 * 2**20
KEY_RECHECK_SECONDS = 1.0  # how often an open stream asks whether its key was revoked
"""Most bytes of ``fileData`` media one request may name, all parts together."""


def servable(model_id: str, tenant: str, store: Store) -> str:
    """What the model host loads for ``models/{model_id}``: a catalog id, or the tenant's tuned model directory."""
    if model_id in CATALOG:
        return model_id
    from tunery.jobs.artifacts import local_copy  # TUNERY_ARTIFACTS a URL: a model tuned on another node

    tuned, checkpoint = split_checkpoint(model_id)  # ``{id}:ckpt-step-N``: one of its kept checkpoints
    path = local_copy(store.get_tuned_model(tenant, tuned).path, tuned)
    if checkpoint is None:
        return path
    try:
        return str(checkpoint_dir(path, checkpoint))
    except ModelError as exc:
        raise NotFoundError(f"models/{model_id}: {exc}") from None


async def _servable(request: Request, tenant: str, model_id: str) -> str:
    if model_id in CATALOG:
        return model_id
    return await run_in_threadpool(servable, model_id, tenant, request.app.state.store)


async def generate(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Gemini's ``GenerateContentResponse`` for ``body`` on ``models/{model_id}``."""
    state = request.app.state
    until = admission.deadline(request, state.admission.limits)
    model = await _servable(request, tenant, model_id)
    body = await _with_media(request, tenant, body)
    host = get_host(request)

    async def admitted() -> dict[str, Any]:
        async with state.admission.admitted(host, tenant, admission.estimate_tokens(body), until) as left:
            return await host.agenerate(
                model, body, max_prompt_tokens=state.settings.max_prompt_tokens, model_version=model_id, timeout=left
            )

    return await admission.until_disconnected(request, admitted())


async def count_tokens(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Gemini's ``CountTokensResponse`` for ``body`` on ``models/{model_id}``."""
    state = request.app.state
    until = admission.deadline(request, state.admission.limits)
    model = await _servable(request, tenant, model_id)
    body = await _with_media(request, tenant, body)
    host = get_host(request)

    async def admitted() -> dict[str, Any]:
        async with state.admission.admitted(host, tenant, admission.prompt_tokens(body), until) as left:
            return await host.acount_tokens(model, body, timeout=left)

    return await admission.until_disconnected(request, admitted())


async def _with_media(request: Request, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    body = standard_base64(body)
    if not any(_file_data(part) for _, _, part in _parts(body)):
        return body
    state = request.app.state
    return await run_in_threadpool(with_media, body, tenant, state.store, state.settings, public_url(request))


def _parts(body: dict[str, Any]) -> list[tuple[int, int, Any]]:
    contents = body.get("contents")
    return [
        (i, j, part)
        for i, turn in enumerate(contents if isinstance(contents, list) else [])
        if isinstance(turn, dict) and isinstance(turn.get("parts"), list)
        for j, part in enumerate(turn["parts"])
    ]


URL_SAFE = str.maketrans("-_", "+/")


def standard_base64(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with each ``inlineData.data`` in standard, padded base64: the Gemini wire form (proto3 JSON
    ``bytes``) may be URL-safe and unpadded, as google-genai sends it; the same dict when nothing changes."""
    changed: dict[tuple[int, int], dict[str, Any]] = {}
    for i, j, part in _parts(body):
        for key in ("inlineData", "inline_data"):
            inline = part.get(key) if isinstance(part, dict) else None
            data = inline.get("data") if isinstance(inline, dict) else None
            if isinstance(inline, dict) and isinstance(data, str) and ("-" in data or "_" in data or len(data) % 4):
                fixed = "".join(data.split()).translate(URL_SAFE)
                changed[(i, j)] = {**part, key: {**inline, "data": fixed + "=" * (-len(fixed) % 4)}}
    if not changed:
        return body
    contents = list(body["contents"])
    for (i, j), part in changed.items():
        contents[i] = {**contents[i], "parts": list(contents[i]["parts"])}
        contents[i]["parts"][j] = part
    return {**body, "contents": contents}


def _file_data(part: Any) -> dict[str, Any] | None:
    found = (part.get("fileData") or part.get("file_data")) if isinstance(part, dict) else None
    return found if isinstance(found, dict) else None


def with_media(
    body: dict[str, Any], tenant: str, store: Store, settings: ApiSettings, api_base: str = ""
) -> dict[str, Any]:
    """``body`` with each ``fileData`` part read into an ``inlineData`` part (see the module doc); 400 naming
    every part that names no readable media of its declared type. An upload's own URI, as the Gemini ``File``
    gives it (``{api_base}v1beta/files/{id}``), names it as ``files/{id}`` does."""
    problems: list[tuple[str, str]] = []
    contents = [dict(turn) if isinstance(turn, dict) else turn for turn in body["contents"]]
    total = 0
    for i, j, part in _parts(body):
        data = _file_data(part)
        if data is None:
            continue
        field = f"contents[{i}].parts[{j}].fileData"
        uri = _own_file(str(data.get("fileUri") or data.get("file_uri") or ""), api_base)
        declared = normalize_mime(str(data.get("mimeType") or data.get("mime_type") or STORED_TYPE))
        try:
            path, stored = _media_path(uri, tenant, store, settings, field)
        except ConfigError as exc:
            problems.append((f"{field}.fileUri", str(exc).removeprefix("fileUri: ")))
            continue
        with path.open("rb") as fh:
            real = stored or sniff(fh.read(64))
        size = path.stat().st_size
        most = MEDIA_BYTES.get(modality_of(real or ""), 0)
        if real is None or not most:
            problems.append((f"{field}.fileUri", f"{uri[:80]}: not an image, audio or PDF file"))
        elif declared not in (STORED_TYPE, real):
            problems.append((f"{field}.mimeType", f"declared {declared} but {uri[:80]} is {real}"))
        elif size > most:
            problems.append(
                (f"{field}.fileUri", f"{uri[:80]}: {size} bytes; a part of {modality_of(real)} takes at most {most}")
            )
        elif total + size > MAX_REQUEST_MEDIA_BYTES:
            problems.append((f"{field}.fileUri", f"the request names over {MAX_REQUEST_MEDIA_BYTES} bytes of media"))
        else:
            total += size
            turn = contents[i]
            turn["parts"] = list(turn["parts"])
            turn["parts"][j] = {"inlineData": {"mimeType": real, "data": base64.b64encode(path.read_bytes()).decode()}}
    if problems:
        raise invalid(problems)
    return {**body, "contents": contents}


def _own_file(uri: str, api_base: str) -> str:
    """``files/{id}`` for this server's URI of an upload (``{api_base}v1/files/{id}``, any API version)."""
    if api_base and uri.startswith(api_base):
        match = OWN_FILE.fullmatch(uri[len(api_base) :])
        if match:
            return f"files/{match['id']}"
    return uri


def _media_path(uri: str, tenant: str, store: Store, settings: ApiSettings, field: str) -> tuple[Path, str | None]:
    """The file a ``fileUri`` names, and its sniffed type when it is an upload; ConfigError when there is none."""
    if uri.startswith("files/"):
        try:
            record = store.get_file(tenant, uri.removeprefix("files/"))
        except NotFoundError:
            raise ConfigError(f"{uri[:80]} not found (upload it with POST /v1/files)") from None
        if "mimeType" not in record.stats:
            raise ConfigError(f"{uri[:80]} is a JSONL dataset, not an image, audio or PDF file")
        path = Path(record.path)
        if not path.is_file():
            raise ConfigError(f"{uri[:80]}: its bytes are gone")
        return path, str(record.stats["mimeType"])
    if uri.split("://", 1)[0].lower() in ("http", "https"):
        raise ConfigError(f"{uri[:80]}: remote media is not fetched; upload it (POST /v1/files) and send files/{{id}}")
    path = resolve_under(settings.data_root, uri, "fileUri")
    if not path.is_file():
        raise ConfigError(f"{uri[:80]!r} is not a file under the data root")
    return path, None


def stream(request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> Stream:
    """The same answer as ``GenerateContentResponse`` chunks (see ``ModelHost.astream``), holding its slot until
    the last chunk or until the iteration is closed; ``await`` it to be admitted (or refused) before iterating."""
    return Stream(request, tenant, model_id, body)


class Stream:
    """An admitted (once awaited) stream of a generation's chunks; see ``stream``."""

    def __init__(self, request: Request, tenant: str, model_id: str, body: dict[str, Any]) -> None:
        self.request, self.tenant, self.model_id, self.body = request, tenant, model_id, body
        self._ticket: admission.Ticket | None = None
        self._chunks: AsyncIterator[dict[str, Any]] | None = None
        self._closed = False
        self._authorized = time.monotonic()

    def __await__(self) -> Generator[Any, None, Stream]:
        return self._admitted().__await__()

    async def _admitted(self) -> Stream:
        if self._ticket is None and not self._closed:
            await admission.until_disconnected(self.request, self._open())
        return self

    async def _open(self) -> None:
        state = self.request.app.state
        until = admission.deadline(self.request, state.admission.limits)
        model = await _servable(self.request, self.tenant, self.model_id)
        self.body = await _with_media(self.request, self.tenant, self.body)
        host = get_host(self.request)
        ticket = await state.admission.enter(host, self.tenant, admission.estimate_tokens(self.body), until)
        self._ticket = ticket
        self._chunks = host.astream(
            model,
            self.body,
            max_prompt_tokens=state.settings.max_prompt_tokens,
            model_version=self.model_id,
            timeout=ticket.deadline - time.monotonic(),
        )

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        await self._admitted()
        if self._chunks is None:
            raise StopAsyncIteration
        try:
            if time.monotonic() - self._authorized > KEY_RECHECK_SECONDS:
                await self._still_authorized()
            return await self._chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def _still_authorized(self) -> None:
        """A revoked key ends its open streams: the next chunk is an error event with code 401."""
        try:
            await still_authorized(self.request)
        except ApiError as exc:
            raise ServingError(f"the API key was revoked: {exc.detail}", 401) from None
        self._authorized = time.monotonic()

    async def aclose(self) -> None:
        """Stop the generation (if it is still running) and free its slot."""
        chunks, self._chunks, self._closed = self._chunks, None, True
        try:
            if chunks is not None and hasattr(chunks, "aclose"):
                await chunks.aclose()
        finally:
            self._leave()

    def _leave(self) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self.request.app.state.admission.leave(ticket)

    def __del__(self) -> None:  # a stream dropped without aclose (its response was cancelled) still frees its slot
        self._leave()
