"""``tunery models``: the base-model catalog."""

from __future__ import annotations

import typer
from rich.table import Table

from tunery.cli._common import console, print_json
from tunery.models.catalog import CATALOG, DEFAULT_MODEL
from tunery.models.sources import cached_path

app = typer.Typer(help="Base models tunery can tune.", no_args_is_help=True)


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the catalog: id, modalities, context length, default learning rates, cache state."""
    rows = [{**entry.to_dict(), "cached": (cached_path(entry) / "config.json").is_file()} for entry in CATALOG.values()]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "modalities", "context", "LoRA lr", "full lr", "cached", "source")
    for row in rows:
        rates = row["defaultLearningRates"]
        name = row["id"] + (" (default)" if row["id"] == DEFAULT_MODEL else "")
        table.add_row(
            name,
            ",".join(row["modalities"]),
            str(row["contextLength"]),
            f"{rates['PEFT_ADAPTER']:g}",
            f"{rates['FULL']:g}",
            "yes" if row["cached"] else "no",
            row["source"],
        )
    console.print(table)
    console.print("Any local Hugging Face model directory (with config.json and a fast tokenizer) is a base model too.")
