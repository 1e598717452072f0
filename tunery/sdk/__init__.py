"""Python SDK, shaped like Vertex's: ``sft.train`` starts a job, ``GenerativeModel`` calls a model."""

from tunery.sdk import sft
from tunery.sdk.evaluation import EvaluationRun, compare, evaluate
from tunery.sdk.generative import GenerationResponse, GenerativeModel, UsageMetadata
from tunery.sdk.jobs import TuningJob

__all__ = [
    "EvaluationRun",
    "GenerationResponse",
    "GenerativeModel",
    "TuningJob",
    "UsageMetadata",
    "compare",
    "evaluate",
    "sft",
]
