"""tunery: self-hosted tuning for open language models.

from tunery import sft, GenerativeModel
job = sft.train(source_model="smollm2-135m-instruct", train_dataset="train.jsonl")
job.wait()
GenerativeModel(job.tuned_model_name).generate_content("My card never arrived").text
"""

from tunery._lazy import exports

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DatasetError",
    "EvaluationRun",
    "GenerationResponse",
    "GenerativeModel",
    "JobError",
    "ModelError",
    "TuneryError",
    "TuningCancelled",
    "TuningJob",
    "__version__",
    "compare",
    "evaluate",
    "init",
    "sft",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        **dict.fromkeys(
            ["ConfigError", "DatasetError", "JobError", "ModelError", "TuneryError", "TuningCancelled"], "tunery.errors"
        ),
        **dict.fromkeys(
            ["EvaluationRun", "GenerationResponse", "GenerativeModel", "TuningJob", "compare", "evaluate", "sft"],
            "tunery.sdk",
        ),
        "init": "tunery.sdk.client",
    },
)
