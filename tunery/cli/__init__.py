"""The ``tunery`` command line: thin commands over the SDK and the layers below it."""

from __future__ import annotations

import typer

from tunery.cli import datasets, models
from tunery.cli.demo import demo
from tunery.cli.predict import predict
from tunery.cli.tune import merge, tune

app = typer.Typer(
    name="tunery",
    help="Tune open language models on your own data, on your own machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.command()(tune)
app.command()(merge)
app.command()(predict)
app.command()(demo)


def main() -> None:
    app()
