"""Stopping the service promptly: requests in flight end, then the scheduler's workers and the model hosts.

    draining = Draining(grace_seconds=2)             # app.state.draining; DrainMiddleware tracks every request
    draining.begin()                                 # on SIGTERM (``tunery serve`` calls it before uvicorn drains)
    await stop_background(app.state)                 # the lifespan's end: workers checkpoint, hosts stop

``begin`` ends every response that is streaming (event streams, streamed generations) at once, with the
end of its body, so the client sees a finished stream rather than a reset; a request that has not
answered yet (a generation waiting for the model host) has ``grace_seconds`` to finish, then is
cancelled with 503 ``UNAVAILABLE`` and ``Retry-After`` (its slot and host call are cancelled with it).
A request that arrives after ``begin`` is 503 at once. uvicorn then finds no task left to wait for.

``stop_background`` stops the scheduler (running workers get SIGTERM, checkpoint and exit; one that has not
within ``worker_seconds`` is killed, and resumes from its last checkpoint) and the model hosts at the same
time; a host that has not exited within ``host_seconds`` (one stopped with SIGSTOP, or deep in a long
generation) is killed: it holds nothing that needs saving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunery.api.errors import error_response

log = logging.getLogger("tunery.api")
GRACE_SECONDS = 2.0
WORKER_SECONDS = 5.0
HOST_SECONDS = 3.0
RETRY_AFTER = "5"


@dataclass(eq=False)
class _Flight:
    """A request in flight: whether its response has started and ended, and whether we cancelled it."""

    task: asyncio.Task[Any]
    started: bool = False
    ended: bool = False
    cancelled: bool = False


class Draining:
    """The requests in flight, and the way to end them all when the server stops (see the module docstring)."""

    def __init__(self, grace_seconds: float = GRACE_SECONDS) -> None:
        self.grace_seconds = grace_seconds
        self.stopping = False
        self._flights: set[_Flight] = set()

    def begin(self) -> None:
        """Stop: end streaming responses now, and cancel the others that are still running after the grace."""
        if self.stopping:
            return
        self.stopping = True
        self._cancel(lambda flight: flight.started)
        asyncio.get_running_loop().call_later(self.grace_seconds, self._cancel, lambda flight: True)

    def _cancel(self, which: Any) -> None:
        for flight in list(self._flights):
            if which(flight) and not flight.ended and not flight.cancelled:
                flight.cancelled = True
                flight.task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._flights)


class DrainMiddleware:
    """Tracks each HTTP request for ``Draining``, and ends those it cancels as the module docstring says."""

    def __init__(self, app: ASGIApp, draining: Draining) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.draining.stopping:
            await _unavailable()(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        flight = _Flight(task)

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                flight.started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                flight.ended = True
            await send(message)

        self.draining._flights.add(flight)
        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not flight.cancelled:
                raise
            task.uncancel()
            if not flight.started:
                await _unavailable()(scope, receive, send)
            elif not flight.ended:
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.draining._flights.discard(flight)


def _unavailable():  # noqa: ANN202 - a Response, which is an ASGI app
    return error_response(
        503,
        "the server is shutting down; retry shortly (on another replica, or once it is back)",
        None,
        {"Retry-After": RETRY_AFTER, "Connection": "close"},
    )


async def stop_background(
    state: Any, worker_seconds: float = WORKER_SECONDS, host_seconds: float = HOST_SECONDS
) -> None:
    """Stop the scheduler (``state.scheduler``) and the model hosts (``state.host``, ``state.checker``) together."""
    stops: list[Awaitable[None]] = []
    if state.scheduler is not None:
        stops.append(_in_thread(lambda: state.scheduler.stop(timeout=worker_seconds), "the scheduler"))
    for host in (state.host, state.checker):
        if host is not None:
            stops.append(_close_host(host, host_seconds))
    await asyncio.gather(*stops)


async def _close_host(host: Any, seconds: float) -> None:
    pid = getattr(host, "pid", None)  # before close(), which forgets it
    closing = _in_thread(host.close, "a model host")
    try:
        await asyncio.wait_for(asyncio.shield(closing), seconds)
        return
    except TimeoutError:
        pass
    log.warning("the model host (pid %s) did not stop within %g s; killing it", pid, seconds)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing, seconds)


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _in_thread(work: Any, what: str) -> asyncio.Future[None]:
    """Run ``work`` in a daemon thread of its own (never a pool another shutdown step waits on)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            work()
        except Exception as exc:  # a failure to stop one part must not stop the others from stopping
            log.warning("stopping %s failed: %s: %s", what, type(exc).__name__, exc)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(_finish, done)

    threading.Thread(target=run, name=f"tunery-stop-{what}", daemon=True).start()
    return done
