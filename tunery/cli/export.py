"""``tunery export``: a tuned model (or a catalog base) as a GGUF file for llama.cpp, with an Ollama Modelfile.

tunery export tuned-models/abc --format gguf --quant q8_0 --output exported/ --ollama
tunery export tuned-models/abc --adapter-only --output exported-adapter/     # a GGUF LoRA adapter
"""

from __future__ import annotations

from pathlib import Path

import typer

from tunery.cli._common import console, handle_errors
from tunery.errors import ConfigError
from tunery.models.export import QUANTS


@handle_errors
def export(
    model: str = typer.Argument(..., help="A tuned model directory, a catalog id or a local model directory."),
    output: Path = typer.Option(..., "--output", "-o", help="A new folder for the GGUF (and Modelfile)."),
    format: str = typer.Option("gguf", "--format", help="Only gguf for now."),
    quant: str = typer.Option("f16", "--quant", help=f"Weight type: {', '.join(QUANTS)} (K-quants need llama.cpp)."),
    adapter_only: bool = typer.Option(
        False, "--adapter-only", help="A LoRA model's adapter alone, in llama.cpp's GGUF adapter format."
    ),
    ollama: bool = typer.Option(False, "--ollama", help="Write an Ollama Modelfile beside the GGUF."),
) -> None:
    """Export to GGUF with the chat template and stop tokens the model was tuned with."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from tunery.models.export import export_gguf

    if format != "gguf":
        raise ConfigError(f"--format {format!r}: expected gguf")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("export", total=1.0)
        result = export_gguf(
            model, output, quant, adapter_only, ollama,
            on_progress=lambda done, what: bar.update(task, completed=done, description=what),
        )  # fmt: skip
    for name, size in result.files.items():
        console.print(f"{output / name}  {size / 1e6:.1f} MB", highlight=False)
    console.print(f"{result.quant} export in {result.seconds:.1f} s", highlight=False)
    if result.modelfile:
        console.print(f"Ollama: cd {output} && ollama create NAME -f Modelfile", highlight=False)
