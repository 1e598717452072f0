"""A job's worker process: ``python -m tunery.jobs.worker JOB_DIR``. Runs the tuning, records the outcome."""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from tunery.errors import TuneryError, TuningCancelled
from tunery.jobs.local import CANCELLED, FAILED, RUNNING, SUCCEEDED, now, write_job
from tunery.tuning import Hooks, TuningSpec, read_manifest, tune


def main(path: Path) -> int:
    job = json.loads((path / "job.json").read_text())
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(requested=True))
    job.update(state=RUNNING, startTime=now())
    write_job(job)
    spec = TuningSpec.from_dict(job["spec"])
    try:
        tuned = tune(spec, Hooks(should_stop=lambda: stop["requested"]))
    except TuningCancelled as exc:
        job.update(state=CANCELLED, error={"code": 1, "message": str(exc)})
    except TuneryError as exc:
        job.update(state=FAILED, error={"code": 3, "message": str(exc)})
    except Exception as exc:  # a bug, or the machine (disk full): the job must still end
        traceback.print_exc()
        job.update(state=FAILED, error={"code": 13, "message": f"{type(exc).__name__}: {exc}"})
    else:
        manifest = read_manifest(tuned)
        job.update(
            state=SUCCEEDED,
            tunedModel={"model": str(tuned), "endpoint": None},
            tuningDataStats=manifest["tuningDataStats"],
        )
    job["endTime"] = now()
    write_job(job)
    return 0 if job["state"] == SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
