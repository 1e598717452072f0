"""``tunery keys``: API keys for ``tunery serve``. Only each key's hash is stored; the key is shown once."""

from __future__ import annotations

import typer

from tunery.cli._common import console, handle_errors

app = typer.Typer(help="API keys for the server (Authorization: Bearer tk_...).", no_args_is_help=True)


@app.command("create")
@handle_errors
def create_key(
    tenant: str = typer.Option(..., help="Whose key: jobs, files and models are visible to their tenant only."),
) -> None:
    """Create a key for TENANT and print it (last line). It cannot be shown again."""
    from tunery.jobs.store import Store

    key = Store().create_key(tenant)
    console.print(
        f"API key for tenant [bold]{tenant}[/bold]. Send it as 'Authorization: Bearer <key>'; "
        "it is not stored and cannot be shown again. Once any key exists, every request needs one.",
        highlight=False,
    )
    typer.echo(key)


@app.command("delete")
@handle_errors
def delete_keys(tenant: str = typer.Option(..., help="The tenant whose keys to delete.")) -> None:
    """Delete every key of TENANT (their jobs, files and models stay)."""
    from tunery.jobs.store import Store

    n = Store().delete_keys(tenant)
    console.print(f"deleted {n} key{'s' * (n != 1)} of tenant {tenant}", highlight=False)
