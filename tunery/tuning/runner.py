"""``tune``: run a ``TuningSpec`` to the end with the method it names (``methods.METHODS``), new or resumed."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunery.errors import ConfigError, DatasetError, JobError, ModelError
from tunery.tuning.loop import Hooks
from tunery.tuning.prepare import new_run_dir, saved_spec
from tunery.tuning.spec import TuningSpec


def tune(spec: TuningSpec, hooks: Hooks | None = None, resume: bool = False) -> Path:
    """Run ``spec`` to the end and return the tuned model directory.

    With ``resume``, ``spec.output`` names a run directory whose saved spec and newest checkpoint are
    used. A new run whose data or model is rejected leaves no directory behind.
    """
    from tunery.tuning.methods import method_of

    if resume:
        if not spec.output:
            raise JobError("resume needs the run's output directory")
        run_dir = Path(spec.output).expanduser().resolve()
        spec = saved_spec(run_dir).computing_as(spec)  # the saved run, on this call's devices and processes
    else:
        run_dir = new_run_dir(spec)
        spec.output = str(run_dir)
    try:
        return method_of(spec).main(spec, run_dir, hooks, resume)
    except (ConfigError, DatasetError, ModelError):
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
