"""A child process that ends with the process it serves, however that one ends (SIGKILL included).

    proc = subprocess.Popen(command, env={**os.environ, **lifeline.child_env()})   # in the parent
    lifeline.watch_parent()                                                         # first thing in the child
    lifeline.watch_parent(on_gone=stop.request, grace=30)                           # a child that winds down

The parent names itself in ``TUNERY_PARENT_PID``; the child reads it (and removes it from its environment,
so its own children name their own parent) and checks every ``POLL_SECONDS`` that its parent is still that
process. Once it is not (the parent died and the child was re-parented to init or a subreaper, or it died
before the child started), ``on_gone`` is called, and ``grace`` seconds later the child exits with
``EXIT_ORPHANED`` whatever it is doing. So an orphan is gone within ``POLL_SECONDS + grace`` of its parent.

Linux's ``PR_SET_PDEATHSIG`` is not used: it fires when the *thread* that started the child exits, and the
API starts its model hosts from pool threads that end when idle, which would kill a healthy host.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

PARENT_ENV = "TUNERY_PARENT_PID"
POLL_SECONDS = 0.25
EXIT_ORPHANED = 3


def child_env() -> dict[str, str]:
    """The environment entry a parent gives a child it starts, so the child can watch it."""
    return {PARENT_ENV: str(os.getpid())}


def watch_parent(on_gone: Callable[[], None] | None = None, grace: float = 0.0) -> int | None:
    """Watch the parent named by ``TUNERY_PARENT_PID`` on a daemon thread (see the module doc); the pid watched,
    or None when no parent named itself (a process started by hand: nothing to watch)."""
    raw = os.environ.pop(PARENT_ENV, "").strip()
    if not raw.isdigit():
        return None
    parent = int(raw)
    threading.Thread(target=_watch, args=(parent, on_gone, grace), name="tunery-lifeline", daemon=True).start()
    return parent


def _watch(parent: int, on_gone: Callable[[], None] | None, grace: float) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    if on_gone is not None:
        with contextlib.suppress(Exception):  # the exit below must happen whatever the wind-down did
            on_gone()
    time.sleep(grace)
    os._exit(EXIT_ORPHANED)
