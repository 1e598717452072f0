"""``GET /healthz``: the process answers (no key needed; it tells nothing about any tenant)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness check")
async def read_health() -> dict[str, str]:
    """``{"status": "ok"}`` while the server runs. Answered on the event loop itself, so it never waits for a
    thread, however busy the control plane's threads or stuck a model host are."""
    return {"status": "ok"}
