"""The web console: its static page at ``/`` and ``/console/*`` (no key: they hold no data), and one read the
console needs beyond the public resources, ``GET /v1/console/tuningJobs/{id}`` (a key, like every data call).

    GET /                      → index.html (Content-Security-Policy: scripts and styles from this origin only)
    GET /console/app.js        → the page's module; /console/vendor/uPlot.iife.min.js the chart library
    GET /v1/console/tuningJobs/{id} → the job's hyperparameters as resolved, its learning rate, its checkpoint

The page signs in with an API key held in its memory (or the tab's sessionStorage) and sends it as
``Authorization: Bearer`` on every call to ``/v1``; it never goes into a URL or a cookie.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from tunery.api.console import ASSETS
from tunery.api.deps import StoreDep, Tenant
from tunery.api.schemas import ErrorResponse, JobId
from tunery.errors import NotFoundError
from tunery.tuning.spec import TuningSpec

router = APIRouter(tags=["console"])

# 'unsafe-inline' styles only: a compare report (one HTML file with a <style> element and data: images) is
# shown in a sandboxed iframe, which takes this page's policy. Scripts: this origin's files, nothing inline.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
RUN_FILE = "run.json"  # tunery.tuning.prepare.RUN_FILE (that module imports torch)
MANIFEST_FILE = "tunery.json"  # the tuned model's manifest (tunery.models.tuned)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "No such job for this tenant"},
}


@router.get("/", include_in_schema=False)
def read_console() -> FileResponse:
    return _asset(ASSETS / "index.html")


@router.get("/console/{path:path}", include_in_schema=False)
def read_console_asset(path: str) -> FileResponse:
    """One of the console's files: only those under the package's console folder, with a known type."""
    candidate = (ASSETS / path).resolve()
    if not candidate.is_relative_to(ASSETS) or candidate.suffix not in MEDIA_TYPES or not candidate.is_file():
        raise NotFoundError(f"/console/{path[:200]} is not one of the console's files")
    return _asset(candidate)


def _asset(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get(
    "/v1/console/tuningJobs/{job_id}",
    response_model=None,
    summary="Read a tuning job's resolved settings and checkpoint (for the console)",
    responses=ERRORS,
)
def read_job_run(job_id: JobId, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    """``hyperParameters`` as the run resolved them (each default filled in; ``epochCount`` once the run has
    counted the data), ``tuningMode``, ``learningRate`` (once known) and ``checkpoint`` (the latest one kept:
    ``step``, ``epoch``, ``createTime``; none once the tuned model is written)."""
    job = store.get_job(tenant, job_id)
    spec = dict(job.spec)
    run_dir = Path(job.output)
    learning_rate = epochs = None
    record = _read_json(run_dir / RUN_FILE)  # while it runs
    if record:
        spec.update(record.get("spec") or {})
        epochs, learning_rate = record.get("epochs"), record.get("learningRate")
    resolved = TuningSpec.from_dict({k: v for k, v in spec.items() if k in TuningSpec.__dataclass_fields__})
    hyper: dict[str, Any] = resolved.hyper_parameters()
    if epochs is not None:
        hyper["epochCount"] = epochs
    manifest = _read_json(run_dir / MANIFEST_FILE)  # once the tuned model is written: what the run used
    if manifest and isinstance(manifest.get("hyperParameters"), dict):
        hyper = dict(manifest["hyperParameters"])
        learning_rate = hyper.pop("learningRate", learning_rate)
    if not resolved.is_lora:
        hyper.pop("adapterSize", None)
    return {
        "name": f"tuningJobs/{job.id}",
        "tuningMode": resolved.method,
        "hyperParameters": hyper,
        "learningRate": learning_rate,
        "checkpoint": _checkpoint(run_dir / "checkpoints"),
    }


def _checkpoint(root: Path) -> dict[str, Any] | None:
    pointer = root / "latest"
    try:
        name = pointer.read_text().strip()
    except OSError:
        return None
    state = _read_json(root / name / "state.json")
    if not state or "/" in name:
        return None
    created = datetime.fromtimestamp((root / name / "state.json").stat().st_mtime, UTC)
    return {
        "name": name,
        "step": state.get("step"),
        "epoch": state.get("epoch"),
        "createTime": created.isoformat().replace("+00:00", "Z"),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
