"""Evaluation: task metrics, prompt-vs-tuned comparison, error analysis and data advice, robustness,
reports with plots.

prompts (YAML prompt configs) → run (predictions with their cost) → tasks + metrics → evaluate (one
candidate) → compare (many, one table) → plots + report (HTML and Markdown); analysis and
embeddings for error analysis and data advice; perturb for robustness.
"""

from tunery.evaluation.analysis import data_advice, error_analysis
from tunery.evaluation.compare import Comparison, Options, Pricing, compare_models, read_evaluation_data
from tunery.evaluation.evaluate import (
    Candidate,
    Evaluation,
    Events,
    evaluate_engine,
    from_predictions,
    load_evaluation,
    measured_weights,
    parse_candidate,
    restrict,
    with_reference,
)
from tunery.evaluation.metrics import classification_metrics, extraction_metrics, generation_metrics, match_label
from tunery.evaluation.perturb import parse_perturbations, perturb_example
from tunery.evaluation.prompts import Prompt, load_prompt
from tunery.evaluation.report import ReportFiles, write_report
from tunery.evaluation.run import Prediction, output_budget, predict_all, summarize, write_predictions
from tunery.evaluation.tasks import Task, resolve_task

__all__ = [
    "Candidate",
    "Comparison",
    "Evaluation",
    "Events",
    "Options",
    "Prediction",
    "Pricing",
    "Prompt",
    "ReportFiles",
    "Task",
    "classification_metrics",
    "compare_models",
    "data_advice",
    "error_analysis",
    "evaluate_engine",
    "extraction_metrics",
    "from_predictions",
    "generation_metrics",
    "load_evaluation",
    "load_prompt",
    "match_label",
    "measured_weights",
    "output_budget",
    "parse_candidate",
    "parse_perturbations",
    "perturb_example",
    "predict_all",
    "read_evaluation_data",
    "resolve_task",
    "restrict",
    "summarize",
    "with_reference",
    "write_predictions",
    "write_report",
]
