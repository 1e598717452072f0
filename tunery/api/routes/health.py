"""``GET /healthz``: the process answers (no key needed; it tells nothing about any tenant), and whether its model
host and dataset checker are ready."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunery.api.deps import readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness check")
async def read_health(request: Request) -> dict[str, str]:
    """``{"status": "ok", "modelHost": ..., "checker": ...}`` while the server runs; each of the two says
    ``ready``, ``starting`` (loading at start, or again after a crash), ``not started`` (the first call starts
    it) or ``failed: <why>``. Answered on the event loop itself, so it never waits for a thread, however busy
    the control plane's threads or stuck a model host are."""
    return {"status": "ok", **readiness(request.app.state)}
