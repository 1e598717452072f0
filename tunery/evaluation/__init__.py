"""Evaluation: prompts, predictions with their cost, task metrics."""

from tunery.evaluation.metrics import classification_metrics, match_label
from tunery.evaluation.prompts import Prompt
from tunery.evaluation.run import Prediction, predict_all, summarize, write_predictions

__all__ = ["Prediction", "Prompt", "classification_metrics", "match_label", "predict_all", "summarize", "write_predictions"]
