"""Python SDK, shaped like Vertex's: ``sft.train`` starts a job, ``GenerativeModel`` calls a model."""

from tunery._lazy import exports

__all__ = [
    "EvaluationRun",
    "GenerationResponse",
    "GenerativeModel",
    "TuningJob",
    "UsageMetadata",
    "compare",
    "evaluate",
    "init",
    "sft",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        "EvaluationRun": "tunery.sdk.evaluation",
        "GenerationResponse": "tunery.sdk.generative",
        "GenerativeModel": "tunery.sdk.generative",
        "TuningJob": "tunery.sdk.jobs",
        "UsageMetadata": "tunery.sdk.generative",
        "compare": "tunery.sdk.evaluation",
        "evaluate": "tunery.sdk.evaluation",
        "init": "tunery.sdk.client",
        "sft": "tunery.sdk.sft",
    },
)
