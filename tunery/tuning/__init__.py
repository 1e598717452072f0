"""Supervised tuning: ``TuningSpec``, the training loop, checkpoints and resume, tuned model output."""

from tunery._lazy import exports

__all__ = ["Hooks", "TuningSpec", "default_epochs", "is_adapter", "load_tuned", "merge", "read_manifest", "tune"]

__getattr__, __dir__ = exports(
    __name__,
    {
        "Hooks": "tunery.tuning.loop",
        "TuningSpec": "tunery.tuning.spec",
        "default_epochs": "tunery.data.stats",
        "is_adapter": "tunery.models.tuned",
        "load_tuned": "tunery.models.tuned",
        "merge": "tunery.tuning.output",
        "read_manifest": "tunery.models.tuned",
        "tune": "tunery.tuning.runner",
    },
)
