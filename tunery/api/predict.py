"""Every path that predicts with a model, from one table: one handler per action, the paths added in a loop.

    add_routes(router, "vertex")   # in a route module, at the place its prediction paths take in the router

The three actions are Gemini's ``generateContent``, ``streamGenerateContent`` and ``countTokens``. A path names
its model by id (``models/{m}``, Vertex's publisher models and tuned models' endpoints) or by the tuning job that
made it (``tunedModels/{id}``); every other path parameter (version, project, location) is checked and echoed,
never used. Each request is checked by ``tunery.serving.gemini`` (torch-free, every problem at once) and goes
through ``tunery.api.generation`` to the model host.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunery.api import generation
from tunery.api.deps import StoreDep, Tenant
from tunery.api.errors import error_body, status_for
from tunery.api.schemas import (
    SERVING_ERRORS,
    CountTokensRequest,
    CountTokensResponse,
    GenerateContentRequest,
    GenerateContentResponse,
    ModelId,
)
from tunery.api.views import TUNED_STATES
from tunery.errors import ConfigError, TuneryError
from tunery.serving import gemini

Alt = Annotated[Literal["sse", "json"], Query(description="sse: Server-Sent Events; json: one JSON array")]
GeminiVersion = Annotated[str, Path(pattern=r"^v1(beta1?)?$", description="API version: v1, v1beta or v1beta1")]
BetaVersion = Annotated[str, Path(pattern=r"^v1beta1?$", description="v1beta or v1beta1 (v1 is the native path)")]
VertexVersion = Annotated[str, Path(pattern=r"^v1(beta1)?$", description="v1 or v1beta1")]
Segment = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="Accepted and echoed in names")]
STREAM_RESPONSES = {
    200: {
        "model": GenerateContentResponse,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "GenerateContentResponse chunks (alt=sse) or a JSON array of them",
    },
    **SERVING_ERRORS,
}
GENERATE_RESPONSES = {200: {"model": GenerateContentResponse}, **SERVING_ERRORS}
COUNT_RESPONSES = {200: {"model": CountTokensResponse}, **SERVING_ERRORS}


# --- one handler per action -----------------------------------------------------------------------------


def body_of(body: GenerateContentRequest | CountTokensRequest) -> dict[str, Any]:
    """A checked request as the camelCase JSON the model host takes."""
    return body.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


async def generate(request: Request, tenant: str, model_id: str, body: GenerateContentRequest) -> dict[str, Any]:
    raw = body_of(body)
    gemini.parse_generate_request(raw)
    return await generation.generate(request, tenant, model_id, raw)


async def count_tokens(request: Request, tenant: str, model_id: str, body: CountTokensRequest) -> dict[str, Any]:
    raw = body_of(body)
    gemini.parse_count_tokens_request(raw)
    return await generation.count_tokens(request, tenant, model_id, raw)


async def stream(
    request: Request, tenant: str, model_id: str, body: GenerateContentRequest, alt: str
) -> StreamingResponse:
    """The answer as it is made: Server-Sent Events (``alt=sse``, what google-genai asks for) or a JSON array
    written element by element (what Vertex AI's REST clients read). A problem found before the first chunk
    is an ordinary error response; one after it ends the stream with an ``{"error": ...}`` element."""
    raw = body_of(body)
    gemini.parse_generate_request(raw)
    chunks = generation.stream(request, tenant, model_id, raw)
    first = await anext(chunks)  # the model, the prompt and the host are checked before the 200 goes out
    if alt == "sse":
        return StreamingResponse(
            _sse(first, chunks),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return StreamingResponse(_array(first, chunks), media_type="application/json")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _rest(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The chunks after the first, then an ``error`` element if the host fails mid-stream."""
    try:
        async for chunk in chunks:
            yield chunk
    except TuneryError as exc:
        yield error_body(status_for(exc), str(exc))
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _sse(first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    yield f"data: {_dumps(first)}\r\n\r\n"
    async for chunk in _rest(chunks):
        yield f"data: {_dumps(chunk)}\r\n\r\n"


async def _array(first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    yield "[" + _dumps(first)
    async for chunk in _rest(chunks):
        yield ",\r\n" + _dumps(chunk)
    yield "]"


def tuned_model_id(store: Any, tenant: str, job_id: str) -> str:
    """The model a ``tunedModels/{id}`` answers with; 400 until its job has succeeded."""
    job = store.get_job(tenant, job_id)
    if job.tuned_model_id is None:
        state = TUNED_STATES.get(job.state, "CREATING")
        raise ConfigError(f"tunedModels/{job_id} is {state}: it answers once its tuning job has succeeded")
    return job.tuned_model_id


# --- the paths --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """A prediction method: its request body, its handler and the answers the OpenAPI document shows."""

    body: type
    handler: Callable[..., Awaitable[Any]]
    responses: dict[int | str, dict[str, Any]]


ACTIONS = {
    "generateContent": Action(GenerateContentRequest, generate, GENERATE_RESPONSES),
    "streamGenerateContent": Action(GenerateContentRequest, stream, STREAM_RESPONSES),
    "countTokens": Action(CountTokensRequest, count_tokens, COUNT_RESPONSES),
}
VERTEX_PATH = (("version", VertexVersion), ("project", Segment), ("location", Segment), ("model_id", ModelId))
PREFIXES: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {
    "models": ("/{model_id}", (("model_id", ModelId),)),  # on the /v1/models router
    "v1": ("/v1/models/{model_id}", (("model_id", ModelId),)),
    "beta": ("/{version}/models/{model_id}", (("version", BetaVersion), ("model_id", ModelId))),
    "tuned": ("/{version}/tunedModels/{job_id}", (("version", GeminiVersion), ("job_id", ModelId))),
    "vertex": ("/{version}/projects/{project}/locations/{location}/publishers/google/models/{model_id}", VERTEX_PATH),
    "endpoint": ("/{version}/projects/{project}/locations/{location}/endpoints/{model_id}", VERTEX_PATH),
    "express": ("/{version}/publishers/google/models/{model_id}", (("version", VertexVersion), ("model_id", ModelId))),
}
"""A path before ``:action``, and its parameters with their checks."""


class Alias(NamedTuple):
    """One prediction path: where it is added, and how the OpenAPI document names it (hidden ones are the same
    handler as a documented path, and are fuzzed there)."""

    group: str  # the router that adds it (add_routes's group)
    prefix: str  # a key of PREFIXES
    action: str  # a key of ACTIONS
    name: str  # the operation's name (its operationId starts with it)
    summary: str
    documented: bool = False
    description: str = ""
    tags: tuple[str, ...] = ()


ALIASES = (
    Alias("models", "models", "generateContent", "generate_content", "Generate a response", True,
          "Gemini's generateContent on a base model or one of the tenant's tuned models."),
    Alias("models", "models", "countTokens", "count_tokens", "Count a prompt's tokens", True,
          "Gemini's countTokens: the prompt's tokens as generateContent would send them to the model."),
    Alias("gemini", "v1", "streamGenerateContent", "stream_generate_content", "Stream a response", True,
          "generateContent, answered chunk by chunk as the model writes.", ("models",)),
    Alias("gemini", "beta", "generateContent", "generate_content_beta", "Generate a response (v1beta, v1beta1)"),
    Alias("gemini", "beta", "streamGenerateContent", "stream_generate_content_beta",
          "Stream a response (v1beta, v1beta1)"),
    Alias("gemini", "beta", "countTokens", "count_tokens_beta", "Count a prompt's tokens (v1beta, v1beta1)"),
    Alias("tuned", "tuned", "generateContent", "generate_tuned", "Generate with a tuned model", True),
    Alias("tuned", "tuned", "streamGenerateContent", "stream_tuned", "Stream from a tuned model"),
    Alias("tuned", "tuned", "countTokens", "count_tokens_tuned", "Count tokens for a tuned model"),
    Alias("vertex", "vertex", "generateContent", "generate_content", "Generate (Vertex AI)", True),
    Alias("vertex", "vertex", "streamGenerateContent", "stream_generate_content", "Stream (Vertex AI)", True),
    Alias("vertex", "vertex", "countTokens", "count_tokens_content", "Count tokens (Vertex AI)", True),
    Alias("vertex", "endpoint", "generateContent", "generate_endpoint", "Generate with a tuned model's endpoint"),
    Alias("vertex", "endpoint", "streamGenerateContent", "stream_endpoint", "Stream from a tuned model's endpoint"),
    Alias("vertex", "endpoint", "countTokens", "count_tokens_endpoint", "Count tokens for a tuned model's endpoint"),
    Alias("vertex", "express", "generateContent", "generate_publisher", "Generate (Vertex AI express mode)"),
    Alias("vertex", "express", "streamGenerateContent", "stream_publisher", "Stream (Vertex AI express mode)"),
    Alias("vertex", "express", "countTokens", "count_tokens_publisher", "Count tokens (Vertex AI express mode)"),
)  # fmt: skip


def add_routes(router: APIRouter, group: str) -> None:
    """Add the ``group``'s rows of ``ALIASES`` to ``router``, in the table's order."""
    for alias in ALIASES:
        if alias.group != group:
            continue
        path = PREFIXES[alias.prefix][0] + ":" + alias.action
        router.add_api_route(
            path,
            _endpoint(alias),
            methods=["POST"],
            response_model=None,
            summary=alias.summary,
            description=alias.description,
            name=alias.name,
            include_in_schema=alias.documented,
            responses=ACTIONS[alias.action].responses,
            tags=list(alias.tags) or None,
        )


def _endpoint(alias: Alias) -> Callable[..., Awaitable[Any]]:
    """The action's handler behind ``alias``'s path parameters, as FastAPI reads an endpoint's signature."""
    action = ACTIONS[alias.action]
    by_job = alias.prefix == "tuned"

    async def endpoint(**values: Any) -> Any:
        request, tenant, body = values["request"], values["tenant"], values["body"]
        if by_job:
            model_id = await run_in_threadpool(tuned_model_id, values["store"], tenant, values["job_id"])
        else:
            model_id = values["model_id"]
        extra = (values["alt"],) if "alt" in values else ()
        return await action.handler(request, tenant, model_id, body, *extra)

    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(name, keyword, annotation=kind) for name, kind in PREFIXES[alias.prefix][1]]
    params += [inspect.Parameter(name, keyword, annotation=kind) for name, kind in _common(action, by_job)]
    if action.handler is stream:
        params.append(inspect.Parameter("alt", keyword, annotation=Alt, default="json"))
    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__name__ = endpoint.__qualname__ = alias.name
    return endpoint


def _common(action: Action, by_job: bool) -> list[tuple[str, Any]]:
    """The parameters after the path's: the body, the request, the tenant (and the store, to read a job)."""
    common: list[tuple[str, Any]] = [("body", action.body), ("request", Request), ("tenant", Tenant)]
    return common + [("store", StoreDep)] if by_job else common
