"""``tunery predict``: ask a base or tuned model; with ``--output``, a batch prediction of a whole file.

tunery predict MODEL "my card never arrived"
tunery predict MODEL --input requests.jsonl --output results.jsonl    # Vertex or OpenAI batch lines

Requests may hold image (or audio, PDF) parts for a model that takes them: ``inlineData`` (base64), or
``fileData`` with a path relative to the input file's folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from tunery.cli._common import LogLines, console, err_console, handle_errors
from tunery.data.formats import user_example
from tunery.data.media import MediaSource
from tunery.data.validation import read_examples
from tunery.serving.gemini import DEFAULT_OUTPUT_TOKENS, GenerationConfig


@handle_errors
def predict(
    model: str = typer.Argument(..., help="Catalog id, local model directory or tuned model directory."),
    text: str = typer.Argument(None, help="The user's message."),
    system: str = typer.Option(None, "--system", help="System instruction."),
    max_tokens: int = typer.Option(DEFAULT_OUTPUT_TOKENS, "--max-tokens", help="maxOutputTokens."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy."),
    free_text: bool = typer.Option(
        False, "--free-text", help="Answer in free text even where the tuned model keeps a label set or schema."
    ),
    input_file: Path = typer.Option(
        None, "--input", help="JSONL of requests (dataset form); prints one JSON line each."
    ),
    output: Path = typer.Option(
        None,
        "--output",
        help="Batch prediction: --input holds Vertex ({request}) or OpenAI ({custom_id, method, url, body}) lines; "
        "results go here, resuming where an interrupted run stopped.",
    ),
) -> None:
    """Generate with the template the model was trained with; greedy by default."""
    if (text is None) == (input_file is None):
        err_console.print("give either TEXT or --input FILE")
        raise typer.Exit(2)
    if output is not None:
        if input_file is None:
            err_console.print("--output needs --input FILE")
            raise typer.Exit(2)
        predict_file(model, input_file, output)
        return
    from tunery.serving.engine import Engine, served_weights  # torch: loaded by the command, not by `tunery --help`
    from tunery.serving.multimodal import inline_media, served_modalities

    engine = Engine(model, weights=served_weights())  # what `tunery serve` would answer on this machine
    config = GenerationConfig(
        max_output_tokens=max_tokens, temperature=temperature, response_mime_type="text/plain" if free_text else None
    )
    if text is not None:
        console.print(engine.generate(user_example(text, system), config).text, highlight=False, markup=False)
        return
    modalities = served_modalities(model)
    report = read_examples(input_file, require_model_turn=False, model_id=f"model {model}", modalities=modalities)
    report.raise_for_errors()
    for example in report.examples:
        request = inline_media(example.prompt(), _media(input_file))
        if system is not None:
            request = type(request)(turns=request.turns, system=system, line=request.line)
        result = engine.generate(request, config)
        record = {
            "line": example.line,
            "output": result.text,
            "finishReason": result.finish_reason,
            "promptTokenCount": result.prompt_tokens,
            "candidatesTokenCount": result.output_tokens,
        }
        if example.target:
            record["target"] = example.target
        sys.stdout.write(json.dumps(record) + "\n")


def _media(input_file: Path) -> MediaSource:
    """Where the requests' ``fileData`` paths resolve: the input file's folder (and ``TUNERY_DATA_ROOT``)."""
    from tunery.settings import data_root

    return MediaSource(base=input_file.expanduser().resolve().parent, root=data_root())


def predict_file(model: str, input_file: Path, output: Path) -> None:
    """A batch prediction of ``input_file`` into ``output`` (``tunery.jobs.batch``), on the model host, with a
    progress bar; OpenAI lines that fail go to ``<output stem>.errors.jsonl``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tunery.jobs.batch import BatchSpec, count_lines, host_generate, run_batch
    from tunery.serving.process import ModelHost

    names = {"results": output.name, "errors": f"{output.stem}.errors.jsonl", "done": f"{output.name}.done.json"}
    spec = BatchSpec(model=model, input=str(input_file), output=str(output.parent or Path(".")))
    bar = Progress(TextColumn("[bold]predicting[/bold]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), console=err_console)  # fmt: skip
    total = count_lines(input_file)
    lines = LogLines("lines answered")

    def show(p: Any) -> None:
        speed = f"{p.tokens_per_second:.1f} tokens/s"
        bar.update(task, completed=p.done, speed=speed)
        lines(p.done, total, speed)

    with ModelHost() as host, bar:
        task = bar.add_task("lines", total=total, speed="")
        lines(0, total)
        result = run_batch(spec, host_generate(host, model), show, names=names, media=_media(input_file))
        bar.update(task, completed=result.done)
        lines(result.done, result.done)
    console.print(
        f"{result.succeeded} of {result.total} lines answered, {result.failed} failed: {output}", highlight=False
    )
