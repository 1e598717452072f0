"""``tunery jobs``: list, inspect, cancel and watch tuning jobs.

On a tunery server with ``--endpoint`` (or ``TUNERY_API_ENDPOINT``); without one, the jobs that the
SDK started on this machine.

    tunery jobs list --state JOB_STATE_RUNNING --label team=search
    tunery jobs watch 20250101120000abcdef012345 --endpoint http://127.0.0.1:8000 --api-key tk_...
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from tunery.cli._common import TrainingProgress, console, err_console, handle_errors, print_json
from tunery.errors import ConfigError
from tunery.jobs.store import STATES
from tunery.sdk import client as remote
from tunery.sdk.jobs import TuningJob

app = typer.Typer(help="Tuning jobs: on a tunery server (--endpoint), else on this machine.", no_args_is_help=True)

ENDPOINT = typer.Option(
    None, "--endpoint", envvar=remote.ENDPOINT_ENV, help="tunery server URL; without one, this machine's jobs."
)
API_KEY = typer.Option(None, "--api-key", envvar=remote.KEY_ENV, help="API key of the tunery server.")
JSON = typer.Option(False, "--json", help="Print the REST resources as JSON.")


def connect(endpoint: str | None, api_key: str | None) -> None:
    """Point the SDK at the server; without an endpoint it reads this machine's job store."""
    if endpoint:
        remote.init(api_endpoint=endpoint, api_key=api_key)


@app.command("list")
@handle_errors
def list_jobs(
    state: str = typer.Option(None, "--state", help="Only jobs in this state, e.g. JOB_STATE_RUNNING."),
    label: list[str] = typer.Option(None, "--label", help="Only jobs with this label (KEY=VALUE); repeatable."),
    as_json: bool = JSON,
    endpoint: str = ENDPOINT,
    api_key: str = API_KEY,
) -> None:
    """List tuning jobs, newest first."""
    connect(endpoint, api_key)
    found = TuningJob.list(state=_state(state), labels=_labels(label or []))
    if as_json:
        print_json([job.to_dict() for job in found])
        return
    table = Table()
    table.add_column("name", no_wrap=True, min_width=max((len(job.name) for job in found), default=4))
    table.add_column("state", no_wrap=True)
    for column in ("base model", "display name", "created"):
        table.add_column(column, overflow="fold")
    for job in found:
        r = job.to_dict()
        table.add_row(
            job.name,
            _short(job.state),
            r["baseModel"],
            r.get("tunedModelDisplayName") or "",
            short_time(r["createTime"]),
        )
    console.print(table)


@app.command("get")
@handle_errors
def get_job(
    job_id: str = typer.Argument(..., metavar="ID", help="tuningJobs/ID or ID."),
    as_json: bool = JSON,
    endpoint: str = ENDPOINT,
    api_key: str = API_KEY,
) -> None:
    """Show one tuning job: state, times, tuned model, error, data statistics."""
    connect(endpoint, api_key)
    job = TuningJob.get(job_id)
    if as_json:
        print_json(job.to_dict())
        return
    show(job.to_dict())


@app.command("cancel")
@handle_errors
def cancel_job(
    job_id: str = typer.Argument(..., metavar="ID", help="tuningJobs/ID or ID."),
    endpoint: str = ENDPOINT,
    api_key: str = API_KEY,
) -> None:
    """Ask a job to stop; it saves a checkpoint and ends CANCELLED."""
    connect(endpoint, api_key)
    job = TuningJob.get(job_id)
    job.cancel()
    console.print(f"{job.name}: {job.state}", highlight=False)


@app.command("watch")
@handle_errors
def watch_job(
    job_id: str = typer.Argument(..., metavar="ID", help="tuningJobs/ID or ID."),
    endpoint: str = ENDPOINT,
    api_key: str = API_KEY,
) -> None:
    """Follow a job live (progress, loss, tokens/s, ETA) until it ends; exit 1 unless it succeeded."""
    connect(endpoint, api_key)
    job = TuningJob.get(job_id)
    console.print(f"{job.name}: {job.state}", highlight=False)
    with TrainingProgress() as progress:
        for event in job.watch():
            if event.get("type") == "metrics" and event.get("data"):
                progress.on_metrics(event["data"])
            elif event.get("type") == "state":
                progress.progress.console.print(_state_line(event), highlight=False, markup=False)
    finish(job)


def finish(job: TuningJob) -> None:
    """Print how the job ended; exit 1 unless it succeeded."""
    if job.has_succeeded:
        console.print(f"{job.name}: succeeded; tuned model {job.tuned_model_name}", highlight=False)
        return
    message = (job.error or {}).get("message") or "no error message"
    err_console.print(f"{job.name}: {_short(job.state)}: {message}", highlight=False, markup=False)
    raise typer.Exit(1)


def show(resource: dict[str, Any]) -> None:
    """A job resource, one field a line."""
    rows = [
        ("name", resource["name"]),
        ("state", resource["state"]),
        ("base model", resource["baseModel"]),
        ("tuning mode", resource.get("tuningMode")),
        ("display name", resource.get("tunedModelDisplayName")),
        ("training data", (resource.get("supervisedTuningSpec") or {}).get("trainingDatasetUri")),
        ("hyperparameters", (resource.get("supervisedTuningSpec") or {}).get("hyperParameters")),
        ("labels", resource.get("labels") or None),
        ("created", resource.get("createTime")),
        ("started", resource.get("startTime")),
        ("ended", resource.get("endTime")),
        ("tuned model", (resource.get("tunedModel") or {}).get("model")),
        ("endpoint", (resource.get("tunedModel") or {}).get("endpoint")),
        ("error", (resource.get("error") or {}).get("message")),
    ]
    stats = (resource.get("tuningDataStats") or {}).get("supervisedTuningDataStats")
    if stats:
        rows.append(("examples", stats.get("tuningDatasetExampleCount")))
        rows.append(("billable tokens", stats.get("totalBillableTokenCount")))
        rows.append(("steps", stats.get("tuningStepCount")))
    for label, value in rows:
        if value not in (None, ""):
            console.print(f"[bold]{label:>16}[/bold]  {value}", highlight=False)


def _state_line(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    state = _short(data["state"]) if data.get("state") else ""
    message = event.get("message") or ""
    error = (data.get("error") or {}).get("message") if isinstance(data.get("error"), dict) else None
    text = " ".join(part for part in (state, message) if part)
    if error and error not in text:
        text += f": {error}"
    return f"{short_time(event.get('createTime', ''))}  {text}".strip()


def short_time(stamp: str) -> str:
    """``2025-01-02T03:04:05.678Z`` → ``2025-01-02 03:04:05`` (UTC)."""
    return stamp[:19].replace("T", " ")


def _short(state: str) -> str:
    return state.removeprefix("JOB_STATE_")


def _state(value: str | None) -> str | None:
    """``running`` or ``JOB_STATE_RUNNING`` → ``JOB_STATE_RUNNING``."""
    if not value:
        return None
    state = value.strip().upper()
    state = state if state.startswith("JOB_STATE_") else f"JOB_STATE_{state}"
    if state not in STATES:
        raise ConfigError(f"--state {value!r}: expected one of {', '.join(_short(s).lower() for s in STATES)}")
    return state


def _labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep:
            key, sep, label = value.partition(":")
        if not sep or not key:
            raise ConfigError(f"--label {value!r}: expected KEY=VALUE")
        labels[key] = label
    return labels
