"""The final evaluation of a tuned model on its validation file, stored in the tuned model directory.

Tuning calls ``evaluate_tuned`` last when it has a validation file: greedy decoding, the examples'
own system instructions (the prompt the model was trained with), and room for the longest expected
answer plus a few tokens, so it stays cheap; with the weights the model server holds on this machine, and fp32
beside them when that is another form (``measured_weights``). ``evaluation.json`` and ``predictions.jsonl`` land
beside ``tunery.json``; ``stored_evaluation`` reads them back (the demo does, instead of
evaluating the tuned model twice).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tunery.data.validation import read_examples
from tunery.errors import TuneryError, TuningCancelled
from tunery.evaluation.compare import read_evaluation_data
from tunery.evaluation.evaluate import (
    EVALUATION_FILE,
    Candidate,
    Evaluation,
    Events,
    evaluate_engine,
    load_evaluation,
    measured_weights,
    with_reference,
)
from tunery.evaluation.prompts import Prompt
from tunery.evaluation.run import output_budget
from tunery.evaluation.tasks import ALL_MODALITIES, resolve_task


def evaluate_tuned(
    tuned_dir: str | Path,
    validation: str | Path,
    train: str | Path | None = None,
    stop: Callable[[], None] = lambda: None,
) -> Evaluation | None:
    """Evaluate the tuned model in ``tuned_dir`` on ``validation`` and store the result there.

    A failure (say, a validation prompt longer than the model's context) is recorded in
    ``evaluation.json`` as ``{"error": ...}`` and does not undo the tuning: None is returned.
    ``stop`` is called before the first prediction and after each one; the ``TuningCancelled`` it raises
    (the job was cancelled) ends the evaluation, nothing stored.
    """
    from tunery.serving.engine import Engine  # torch: only when a model runs

    tuned_dir = Path(tuned_dir)
    try:
        from tunery.serving.multimodal import served_modalities

        examples = read_evaluation_data(validation, modalities=served_modalities(tuned_dir))
        label_sources = []
        if train and Path(train).is_file():
            label_sources = read_examples(train, modalities=ALL_MODALITIES).examples
        task = resolve_task("auto", examples, label_sources, str(validation))
        candidate = Candidate("tuned model", str(tuned_dir), Prompt(name="as-is"))
        events = Events(on_prediction=lambda name, prediction: stop())
        evaluations = []
        for weights in measured_weights():
            engine = Engine(tuned_dir, weights=weights)
            stop()
            config = output_budget(engine, examples)
            evaluations.append(
                evaluate_engine(engine, examples, candidate, task, config, data=str(validation), events=events)
            )
            del engine  # the next form loads from the files
        evaluation = with_reference(evaluations)
    except TuningCancelled:
        raise
    except TuneryError as exc:
        (tuned_dir / EVALUATION_FILE).write_text(json.dumps({"error": str(exc)}, indent=2) + "\n")
        return None
    evaluation.save(tuned_dir)
    return evaluation


def stored_evaluation(tuned_dir: str | Path) -> Evaluation | None:
    """The evaluation tuning stored in ``tuned_dir``; None if it has none (no validation file, or it failed)."""
    return load_evaluation(tuned_dir)
