"""``tunery predict``: ask a base or tuned model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tunery.cli._common import console, err_console, handle_errors
from tunery.data.formats import user_example
from tunery.data.validation import read_examples
from tunery.serving.gemini import GenerationConfig


@handle_errors
def predict(
    model: str = typer.Argument(..., help="Catalog id, local model directory or tuned model directory."),
    text: str = typer.Argument(None, help="The user's message."),
    system: str = typer.Option(None, "--system", help="System instruction."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="maxOutputTokens."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy."),
    input_file: Path = typer.Option(
        None, "--input", help="JSONL of requests (dataset form); prints one JSON line each."
    ),
) -> None:
    """Generate with the template the model was trained with; greedy by default."""
    if (text is None) == (input_file is None):
        err_console.print("give either TEXT or --input FILE")
        raise typer.Exit(2)
    from tunery.serving.engine import Engine  # torch: loaded by the command, not by `tunery --help`

    engine = Engine(model)
    config = GenerationConfig(max_output_tokens=max_tokens, temperature=temperature)
    if text is not None:
        console.print(engine.generate(user_example(text, system), config).text, highlight=False, markup=False)
        return
    report = read_examples(input_file, require_model_turn=False)
    report.raise_for_errors()
    for example in report.examples:
        request = example.prompt()
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
