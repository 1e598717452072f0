"""``tunery serve``: the tuning service over HTTP (see ``tunery.api``)."""

from __future__ import annotations

import typer

from tunery.cli._common import handle_errors


@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; a non-loopback one needs an API key first."),
    port: int = typer.Option(8080, min=0, max=65535, help="Port; 0 picks a free one (the printed URL names it)."),
    workers: int = typer.Option(1, min=1, max=64, help="Tuning jobs run at once, each in its own worker process."),
) -> None:
    """Serve the REST API (tuning jobs, files, models, generateContent) until Ctrl-C or SIGTERM."""
    from tunery.api.server import serve as run

    run(host=host, port=port, workers=workers)
