"""``tunery files``: upload datasets to a tunery server, list and delete them.

    tunery files upload train.jsonl --model smollm2-135m-instruct --endpoint http://127.0.0.1:8000
    tunery jobs ...   # then name it as files/ID in sft.train(train_dataset="files/ID")

A server checks an upload as ``tunery datasets validate`` does; every problem is printed, by line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tunery.cli._common import console, handle_errors, print_json
from tunery.cli.jobs import short_time
from tunery.errors import ConfigError
from tunery.sdk import client as remote

app = typer.Typer(help="Dataset files on a tunery server.", no_args_is_help=True)

ENDPOINT = typer.Option(None, "--endpoint", envvar=remote.ENDPOINT_ENV, help="tunery server URL.")
API_KEY = typer.Option(None, "--api-key", envvar=remote.KEY_ENV, help="API key of the tunery server.")
JSON = typer.Option(False, "--json", help="Print the REST resources as JSON.")


def connect(endpoint: str | None, api_key: str | None) -> remote.Client:
    """The server's client; files live on a server, so there must be one."""
    if not endpoint:
        raise ConfigError("files live on a tunery server: give --endpoint URL (or set TUNERY_API_ENDPOINT)")
    return remote.Client(endpoint, api_key)


@app.command("upload")
@handle_errors
def upload(
    file: Path = typer.Argument(..., help="A JSONL dataset (Gemini or OpenAI form)."),
    model: str = typer.Option(None, "--model", "-m", help="Base model whose tokenizer counts the tokens."),
    max_length: int = typer.Option(None, "--max-length", help="Tokens per example before truncation."),
    as_json: bool = JSON,
    endpoint: str = ENDPOINT,
    api_key: str = API_KEY,
) -> None:
    """Upload and check a dataset; prints its files/ID and statistics, or every problem and exit 1."""
    with connect(endpoint, api_key) as client:
        resource = client.upload_file(file, model=model, max_length=max_length)
    if as_json:
        print_json(resource)
        return
    console.print(resource["name"], highlight=False)
    show_stats(resource)


@app.command("list")
@handle_errors
def list_files(as_json: bool = JSON, endpoint: str = ENDPOINT, api_key: str = API_KEY) -> None:
    """List uploaded files, newest first."""
    with connect(endpoint, api_key) as client:
        found = client.list_files()
    if as_json:
        print_json(found)
        return
    table = Table()
    table.add_column("name", no_wrap=True, min_width=max((len(f["name"]) for f in found), default=4))
    for column in ("display name", "examples", "bytes", "tokenized with", "created"):
        table.add_column(column, overflow="fold")
    for f in found:
        table.add_row(
            f["name"],
            f.get("displayName") or "",
            str(f.get("exampleCount", "")),
            str(f.get("sizeBytes", "")),
            f.get("tokenizedWith") or "",
            short_time(f.get("createTime") or ""),
        )
    console.print(table)


@app.command("delete")
@handle_errors
def delete(
    file_id: str = typer.Argument(..., metavar="ID", help="files/ID or ID."),
    endpoint: str = ENDPOINT,
    api_key: str = API_KEY,
) -> None:
    """Delete an uploaded file (jobs that used it keep their copy)."""
    with connect(endpoint, api_key) as client:
        client.delete_file(file_id)
    console.print(f"deleted files/{remote.file_id(file_id)}", highlight=False)


def show_stats(resource: dict[str, Any]) -> None:
    """A file's example count, truncation and token distributions."""
    stats = resource.get("supervisedTuningDataStats") or {}
    examples = resource.get("exampleCount", stats.get("tuningDatasetExampleCount"))
    truncated = stats.get("totalTruncatedExampleCount", 0)
    model = resource.get("tokenizedWith") or "?"
    console.print(f"{examples} examples, {truncated} truncated (tokenized with {model})", highlight=False)
    table = Table("tokens per example", "sum", "min", "p5", "median", "mean", "p95", "max")
    for label, key in (
        ("input (prompt)", "userInputTokenDistribution"),
        ("output (trained)", "userOutputTokenDistribution"),
    ):
        d = stats.get(key)
        if d:
            table.add_row(label, *(f"{d.get(k, 0):g}" for k in ("sum", "min", "p5", "median", "mean", "p95", "max")))
    if table.rows:
        console.print(table)
