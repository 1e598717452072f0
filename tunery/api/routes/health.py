"""``GET /healthz``: the process answers (no key needed; it tells nothing about any tenant)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness check")
def read_health() -> dict[str, str]:
    """``{"status": "ok"}`` while the server runs."""
    return {"status": "ok"}
