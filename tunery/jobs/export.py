"""Export jobs: a model written as GGUF (and an Ollama Modelfile) by a worker, as a job the API can follow.

An export job is a row of the job store like a batch prediction job (``tuning_mode`` ``EXPORT``), run by the same
scheduler and worker (``python -m tunery.jobs.worker ID`` hands it to ``run_job``): states, progress events (the
fraction done and what is being written), cancel. The work is ``tunery.models.export.export_gguf`` into
``$TUNERY_HOME/jobs/{id}/export``; it is bounded in time (``timeoutSeconds``, at most ``MAX_TIMEOUT_SECONDS``) and
in disk (the export checks the free space it needs before writing, and a full disk ends the job with nothing
left behind). A finished job lists its files; the API serves them for download.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunery.errors import ConfigError, TuneryError

EXPORT_MODE = "EXPORT"
MAX_TIMEOUT_SECONDS = 3600
PROGRESS_EVERY_SECONDS = 1.0


@dataclass
class ExportSpec:
    """What an export job runs: the model (a catalog id or tuned model directory), the quant, where files go."""

    model: str
    output: str  # a new directory
    quant: str = "f16"
    adapter_only: bool = False
    ollama: bool = False
    timeout_seconds: int = 1800
    display_name: str = ""
    model_name: str = ""  # the model as the API names it (models/{id})
    labels: dict[str, str] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from tunery.models.export import QUANTS

        if self.quant not in QUANTS:
            raise ConfigError(f"quant {self.quant!r}: expected one of {', '.join(QUANTS)}")
        if not 1 <= self.timeout_seconds <= MAX_TIMEOUT_SECONDS:
            raise ConfigError(f"timeoutSeconds {self.timeout_seconds}: expected 1 to {MAX_TIMEOUT_SECONDS}")

    # what Store.create_job reads of a spec
    @property
    def base_model(self) -> str:
        return self.model

    @property
    def method(self) -> str:
        return EXPORT_MODE

    def to_dict(self) -> dict[str, Any]:
        return {"kind": EXPORT_MODE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportSpec:
        return cls(**{k: v for k, v in data.items() if k != "kind"})


def is_export(job: Any) -> bool:
    return job.tuning_mode == EXPORT_MODE


def create(store: Any, tenant: str, spec: ExportSpec, job_id: str) -> Any:
    """A PENDING export job in ``store`` (the scheduler starts its worker)."""
    spec.display_name = spec.display_name or job_id
    job, _ = store.create_job(tenant, spec, spec.request or {"model": spec.model}, job_id=job_id)  # type: ignore[arg-type]
    return job


class Cancelled(TuneryError):
    """The export stopped on request."""


def run_job(store: Any, job: Any, watch_parent: bool = False) -> int:
    """A worker's run of an export job; the exit status for the worker."""
    from tunery.errors import DiskFullError
    from tunery.jobs.stopping import StopRequests
    from tunery.jobs.store import CANCELLED, CODE_CANCELLED, CODE_INTERNAL, CODE_INVALID_ARGUMENT, FAILED, SUCCEEDED
    from tunery.models.export import export_gguf

    spec = ExportSpec.from_dict(job.spec)
    stop = StopRequests(store, job.id, watch_parent)
    store.add_event(job.id, "state", f"exporting {spec.model_name or spec.model} to GGUF {spec.quant}", None)
    last = [0.0]

    def on_progress(fraction: float, what: str) -> None:
        if stop():
            raise Cancelled("cancelled on request; nothing was kept")
        if time.monotonic() - last[0] >= PROGRESS_EVERY_SECONDS or fraction >= 1.0:
            last[0] = time.monotonic()
            progress = {"fraction": round(fraction, 3), "message": what}
            store.update_job(job.id, stats=progress)
            store.add_event(job.id, "metrics", what, progress)

    try:
        result = export_gguf(spec.model, Path(spec.output), spec.quant, spec.adapter_only, spec.ollama, on_progress,
                             timeout=spec.timeout_seconds)  # fmt: skip
    except Cancelled as exc:
        store.end_job(job.id, CANCELLED, error={"code": CODE_CANCELLED, "message": str(exc)}, message=str(exc))
        return 0
    except DiskFullError as exc:
        store.end_job(job.id, FAILED, error={"code": CODE_INTERNAL, "message": str(exc)}, message=str(exc))
        return 1
    except TuneryError as exc:
        store.end_job(job.id, FAILED, error={"code": CODE_INVALID_ARGUMENT, "message": str(exc)}, message=str(exc))
        return 1
    stats = {"fraction": 1.0, **result.to_dict(), "output": None, "gguf": result.gguf.name}
    stats["modelfile"] = result.modelfile.name if result.modelfile else None
    message = f"wrote {', '.join(result.files)} in {result.seconds:.1f} s"
    store.end_job(job.id, SUCCEEDED, stats=stats, message=message)
    return 0


def resource(job: Any, api_base: str = "") -> dict[str, Any]:
    """An export operation's REST view: state, progress, and download links once it has succeeded."""
    from tunery.jobs.store import CANCELLING, PENDING, RUNNING, SUCCEEDED

    spec = ExportSpec.from_dict(job.spec)
    state = CANCELLING if job.cancel_requested and job.state in (PENDING, RUNNING) else job.state
    stats = job.stats or {}
    out: dict[str, Any] = {
        "name": f"exportJobs/{job.id}",
        "model": spec.model_name or spec.model,
        "format": "gguf",
        "quant": spec.quant,
        "adapterOnly": spec.adapter_only,
        "ollama": spec.ollama,
        "state": state,
        "createTime": job.create_time,
        "updateTime": job.update_time,
        "progress": {k: stats[k] for k in ("fraction", "message") if k in stats},
    }
    if job.state == SUCCEEDED:
        out["files"] = [
            {"name": name, "sizeBytes": str(size), "downloadUri": f"{api_base}v1/exportJobs/{job.id}/files/{name}"}
            for name, size in (stats.get("files") or {}).items()
        ]
        out["exportSeconds"] = stats.get("seconds")
    for key, value in (("startTime", job.start_time), ("endTime", job.end_time), ("error", job.error)):
        if value:
            out[key] = value
    return out
