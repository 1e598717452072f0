"""A helper process of ``tunery tune --processes N``, started by process 0 (``distributed.Helpers``)::

    python -m tunery.tuning.helper RANK COUNT PORT    # the spec, run directory and resume flag come in its environment

It joins process 0's group and trains alongside it with the method the spec names (``methods.METHODS``). It sits
above ``distributed`` and the method modules, which import ``distributed``: started by module name, never imported.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import warnings
from pathlib import Path


def helper_main(rank: int, count: int, port: int) -> int:
    """Join process 0's group as ``rank`` of ``count`` and train alongside it."""
    from tunery.errors import TuningCancelled
    from tunery.tuning import distributed
    from tunery.tuning.methods import method_of
    from tunery.tuning.spec import TuningSpec

    payload = distributed.join_as_helper(rank, count, port)
    spec = TuningSpec.from_dict(payload["spec"])
    with contextlib.suppress(TuningCancelled):  # process 0 reports the cancel
        method_of(spec).main(spec, Path(payload["run_dir"]), resume=payload["resume"])
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tunery.tuning.helper")
    parser.add_argument("rank", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(helper_main(args.rank, args.count, args.port))
