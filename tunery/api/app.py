"""The FastAPI application: thin routes over the job store, the scheduler and the model host.

    app = create_app()                          # what `tunery serve` runs, with a Scheduler
    app = create_app(store=Store(url), host=fake_host, checker=fake_host, settings=ApiSettings(data_root=root))

Nothing here or below imports torch: tuning runs in worker processes (started by the scheduler),
prediction in the model host's subprocess and upload checks in a second one (the checker).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import FastAPI

from tunery import __version__
from tunery.api import errors, shutdown
from tunery.api.admission import Admission
from tunery.api.deps import Authenticator, AuthMiddleware, warm_hosts
from tunery.api.limits import ApiSettings, BodyLimitMiddleware
from tunery.api.routes import (
    batches,
    console,
    exports,
    files,
    gemini,
    gemini_files,
    health,
    jobs,
    models,
    openai,
    vertex,
)
from tunery.jobs.store import Store
from tunery.settings import AdmissionLimits

if TYPE_CHECKING:
    from tunery.serving.process import GenerationHost, ModelHost

DESCRIPTION = """Self-hosted supervised tuning for open language models, in the shape of Vertex AI's tuning API
and Gemini's generateContent.

Every path except `/healthz` and this description needs `Authorization: Bearer tk_...` once any API key exists
(`tunery keys create --tenant T`). Errors are `{"error": {"code", "message", "status", "details"}}`."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the scheduler with the server; on shutdown stop it (workers checkpoint) and the hosts, together and
    bounded (``tunery.api.shutdown``). Blocking control-plane work gets ``api_threads`` threads; generation holds
    none (it awaits the model host)."""
    state = app.state
    anyio.to_thread.current_default_thread_limiter().total_tokens = state.admission.limits.api_threads
    if state.scheduler is not None:
        state.scheduler.start()
    if state.warm:
        warm_hosts(state)
    try:
        yield
    finally:
        await shutdown.stop_background(state)
        if state.owns_store:
            state.store.close()


def create_app(
    store: Store | None = None,
    host: GenerationHost | None = None,
    scheduler: Any = None,
    settings: ApiSettings | None = None,
    checker: ModelHost | None = None,
    admission: AdmissionLimits | None = None,
    warm: bool = False,
) -> FastAPI:
    """The service. ``store`` defaults to ``Store()`` (``TUNERY_DATABASE_URL``); ``host`` (generation) and
    ``checker`` (upload checks) each to a ``ModelHost`` made on first use; ``settings`` and ``admission`` (the
    limits on generation and tuning under load) to the environment's; without ``scheduler`` jobs wait in the
    store. ``warm``: start the model host and the checker with the server (``deps.warm_hosts``)."""
    settings = settings or ApiSettings.from_env()
    app = FastAPI(
        title="tunery",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.owns_store = store is None
    app.state.store = store or Store()
    app.state.host = host
    app.state.checker = checker
    app.state.host_lock = threading.Lock()
    app.state.scheduler = scheduler
    app.state.warm = warm
    app.state.settings = settings
    app.state.admission = Admission(admission or AdmissionLimits.from_env())
    app.state.draining = shutdown.Draining()
    errors.install(app)
    for router in (
        health.router,
        files.router,
        jobs.router,
        models.router,
        console.router,
        batches.router,
        exports.router,
    ):
        app.include_router(router)
    for router in (gemini.router, gemini_files.router, vertex.router, openai.router):  # the clients' shapes (#12)
        app.include_router(router)
    # the last added runs first: track the request for a clean stop, authenticate before a body is read, then
    # hold it to its limit
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )
    app.add_middleware(AuthMiddleware, authenticator=Authenticator(app.state.store, settings.key_cache_seconds))
    app.add_middleware(shutdown.DrainMiddleware, draining=app.state.draining)  # outermost: sees every request
    return app
