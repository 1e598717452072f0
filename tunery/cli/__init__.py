"""The ``tunery`` command line: thin commands over the SDK and the layers below it."""

from __future__ import annotations

import warnings

import typer

from tunery.cli import datasets, files, jobs, keys, models
from tunery.cli.demo import demo
from tunery.cli.evaluate import advise, compare, evaluate
from tunery.cli.export import export
from tunery.cli.predict import predict
from tunery.cli.serve import serve
from tunery.cli.tune import merge, tune

app = typer.Typer(
    name="tunery",
    help="Tune open language models on your own data, on your own machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from tunery import __version__

        typer.echo(f"tunery {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Tune open language models on your own data, on your own machine."""


app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.add_typer(keys.app, name="keys")
app.add_typer(jobs.app, name="jobs")
app.add_typer(files.app, name="files")
app.command()(tune)
app.command()(merge)
app.command()(export)
app.command()(predict)
app.command()(demo)
app.command()(evaluate)
app.command()(compare)
app.command()(advise)
app.command()(serve)


def main() -> None:
    # Library deprecation notices are for us, not for the person running a command.
    warnings.filterwarnings("ignore", category=FutureWarning)
    app()
