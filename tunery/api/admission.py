"""Admission control: which generation calls reach a model host, in what order, and which are refused at once.

    admission = Admission(AdmissionLimits.from_env())           # one per app: ``app.state.admission``
    async with admission.admitted(host, tenant, tokens, deadline) as seconds_left:
        result = await host.agenerate(..., timeout=seconds_left)

Each model host has ``host_slots`` slots (the calls it runs at once, batched) and a queue of at most
``host_queue`` calls waiting for one. A freed slot goes to the tenants with waiting calls in turn
(round-robin, oldest call first within a tenant), so one tenant's flood cannot starve another tenant's
single request: that request waits for at most one grant per other waiting tenant. Per tenant, at most
``tenant_requests`` calls and ``tenant_tokens`` estimated tokens (``estimate_tokens``) are in flight, running
or waiting; a tenant's own first call is always admitted whatever its size (the request limits bound it).

Past a limit, or after ``queue_seconds`` in the queue, a call is refused with ``ResourceExhaustedError``
(429 ``RESOURCE_EXHAUSTED`` with ``Retry-After``), never left to time out. A client sets its deadline with
``X-Request-Timeout`` (seconds, at most ``max_request_seconds``, which is also the default): a call whose
deadline passes in the queue is 504 ``DEADLINE_EXCEEDED``, and the host call gets what remains as its timeout.
A client that disconnects cancels its call (``until_disconnected``), which frees its slot at once.

``admit_job`` holds tenants to ``tenant_jobs`` tuning jobs waiting or running. Everything here runs on the
server's event loop (no locks); only ``admit_job`` runs in a handler's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from tunery.api.errors import ApiError, invalid
from tunery.errors import ResourceExhaustedError, ServingError
from tunery.jobs.store import CANCELLING, PENDING, RUNNING, Store
from tunery.serving.gemini import GenerationConfig
from tunery.settings import AdmissionLimits

if TYPE_CHECKING:
    from tunery.serving.process import GenerationHost

T = TypeVar("T")

TIMEOUT_HEADER = "X-Request-Timeout"
CHARS_PER_TOKEN = 4
"""The estimate of a prompt's tokens: its text's characters over this (English text runs 3 to 5)."""
DEFAULT_OUTPUT_TOKENS = GenerationConfig().max_output_tokens
DISCONNECT_POLL_SECONDS = 0.25
MAX_RETRY_AFTER = 60.0
SMOOTHING = 0.2
"""Weight of the newest call in a host's average call time (from which ``Retry-After`` is estimated)."""


class QueueFull(Exception):
    """A host's queue holds ``host_queue`` calls already."""


class HostQueue:
    """One model host's slots and the calls waiting for them, granted round-robin across tenants."""

    def __init__(self, slots: int, limit: int) -> None:
        self.slots = slots
        self.limit = limit
        self.running = 0
        self.call_seconds = 1.0  # a smoothed average of recent calls' time in their slot
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}  # insertion order is the rotation

    @property
    def waiting(self) -> int:
        return sum(len(line) for line in self._waiting.values())

    def waiting_for(self, tenant: str) -> int:
        return len(self._waiting.get(tenant, ()))

    async def acquire(self, tenant: str, timeout: float) -> None:
        """Wait (at most ``timeout`` s, else ``TimeoutError``) for a slot; ``QueueFull`` at once if the queue is."""
        if self.running < self.slots and not self._waiting:
            self.running += 1
            return
        if self.waiting >= self.limit:
            raise QueueFull
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(turn)
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()  # granted as the wait ended: hand the slot on
            else:
                turn.cancel()
                self._forget(tenant, turn)
            raise

    def release(self, seconds: float | None = None) -> None:
        """Give a slot back (``seconds``: how long its call took) and grant it to the next tenant in turn."""
        self.running -= 1
        if seconds is not None:
            self.call_seconds += SMOOTHING * (seconds - self.call_seconds)
        self._grant()

    def retry_after(self, ahead: int | None = None) -> float:
        """Seconds until a call with ``ahead`` calls before it (default: the whole queue) might get a slot."""
        ahead = self.waiting if ahead is None else ahead
        return min(MAX_RETRY_AFTER, max(1.0, self.call_seconds * (ahead / self.slots + 1)))

    def _grant(self) -> None:
        while self.running < self.slots and self._waiting:
            tenant = next(iter(self._waiting))
            line = self._waiting.pop(tenant)
            turn = line.popleft()
            if line:
                self._waiting[tenant] = line  # to the back of the rotation
            if not turn.done():
                turn.set_result(None)
                self.running += 1

    def _forget(self, tenant: str, turn: asyncio.Future[None]) -> None:
        line = self._waiting.get(tenant)
        if line is not None:
            with contextlib.suppress(ValueError):
                line.remove(turn)
            if not line:
                del self._waiting[tenant]


@dataclass
class _Load:
    """One tenant's generation calls in flight (running or waiting) and their estimated tokens."""

    requests: int = 0
    tokens: int = 0


@dataclass(eq=False)
class Ticket:
    """One admitted call: the queue whose slot it holds (once ``granted``), and what it counts for its tenant."""

    queue: HostQueue
    tenant: str
    tokens: int
    deadline: float
    granted: float | None = None
    left: bool = False


class Admission:
    """The limits of ``AdmissionLimits`` applied to every generation call of one app (see the module docstring)."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._queues: dict[int, tuple[GenerationHost, HostQueue]] = {}
        self._tenants: dict[str, _Load] = {}

    def queue(self, host: GenerationHost) -> HostQueue:
        """``host``'s queue, made on first use."""
        entry = self._queues.get(id(host))
        if entry is None or entry[0] is not host:
            entry = (host, HostQueue(self.limits.host_slots, self.limits.host_queue))
            self._queues[id(host)] = entry
        return entry[1]

    def load(self, tenant: str) -> tuple[int, int]:
        """``(calls, tokens)`` the tenant has in flight."""
        load = self._tenants.get(tenant)
        return (load.requests, load.tokens) if load else (0, 0)

    @asynccontextmanager
    async def admitted(self, host: GenerationHost, tenant: str, tokens: int, deadline: float) -> AsyncIterator[float]:
        """Hold one of ``host``'s slots for ``tenant``'s call (``deadline``: ``time.monotonic()`` seconds); yields
        the seconds left until the deadline. See ``enter``."""
        ticket = await self.enter(host, tenant, tokens, deadline)
        try:
            yield ticket.deadline - time.monotonic()
        finally:
            self.leave(ticket)

    async def enter(self, host: GenerationHost, tenant: str, tokens: int, deadline: float) -> Ticket:
        """Wait for one of ``host``'s slots for ``tenant``'s call; ``leave(ticket)`` gives it back. Raises
        ``ResourceExhaustedError`` past a limit, ``ServingError`` 504 when the deadline passes in the queue."""
        limits, queue = self.limits, self.queue(host)
        load = self._tenants.setdefault(tenant, _Load())
        if load.requests >= limits.tenant_requests:
            raise ResourceExhaustedError(
                f"too many generation requests in flight for this tenant: {load.requests}, the most allowed; "
                "retry once some have been answered",
                queue.retry_after(queue.waiting_for(tenant)),
            )
        if load.requests and load.tokens + tokens > limits.tenant_tokens:
            raise ResourceExhaustedError(
                f"too many tokens in flight for this tenant: {load.tokens} and this request's {tokens} (prompt "
                f"characters / {CHARS_PER_TOKEN} + maxOutputTokens) would pass the limit of {limits.tenant_tokens}",
                queue.retry_after(queue.waiting_for(tenant)),
            )
        load.requests += 1
        load.tokens += tokens
        ticket = Ticket(queue, tenant, tokens, deadline)
        started = time.monotonic()
        try:
            await queue.acquire(tenant, min(limits.queue_seconds, deadline - started))
        except QueueFull:
            self._unload(ticket)
            raise ResourceExhaustedError(
                f"the model host's queue is full ({queue.waiting} requests waiting for {queue.slots} slots)",
                queue.retry_after(),
            ) from None
        except TimeoutError:
            self._unload(ticket)
            waited = time.monotonic() - started
            if deadline - time.monotonic() <= 0:
                raise ServingError(
                    f"the request's deadline ({TIMEOUT_HEADER}) passed after {waited:.1f} s waiting for the model host",
                    504,
                ) from None
            raise ResourceExhaustedError(
                f"no model host slot came free within {limits.queue_seconds:g} s ({queue.waiting} requests "
                f"waiting for {queue.slots} slots)",
                queue.retry_after(),
            ) from None
        except BaseException:
            self._unload(ticket)
            raise
        ticket.granted = time.monotonic()
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Give the ticket's slot back (once; again does nothing)."""
        if ticket.granted is None or ticket.left:
            return
        ticket.queue.release(time.monotonic() - ticket.granted)
        self._unload(ticket)

    def _unload(self, ticket: Ticket) -> None:
        ticket.left = True
        load = self._tenants.get(ticket.tenant)
        if load is not None:
            load.requests -= 1
            load.tokens -= ticket.tokens
            if load.requests <= 0:
                del self._tenants[ticket.tenant]


def estimate_tokens(body: dict[str, Any]) -> int:
    """A generateContent (or countTokens) body's tokens, estimated without a tokenizer: the characters of its
    text parts (``contents`` and ``systemInstruction``) over ``CHARS_PER_TOKEN``, plus ``maxOutputTokens`` (the
    model's default when unset) for each candidate."""
    chars = _text_chars(body.get("contents")) + _text_chars(body.get("systemInstruction"))
    found = body.get("generationConfig")
    config: dict[str, Any] = found if isinstance(found, dict) else {}
    output = config.get("maxOutputTokens", DEFAULT_OUTPUT_TOKENS)
    candidates = config.get("candidateCount", 1)
    output = output if isinstance(output, int) and output > 0 else DEFAULT_OUTPUT_TOKENS
    candidates = candidates if isinstance(candidates, int) and candidates > 0 else 1
    return math.ceil(chars / CHARS_PER_TOKEN) + output * candidates


def prompt_tokens(body: dict[str, Any]) -> int:
    """A countTokens body's estimated tokens: its text only (nothing is generated)."""
    chars = _text_chars(body.get("contents")) + _text_chars(body.get("systemInstruction"))
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def _text_chars(value: Any, depth: int = 0) -> int:
    if depth > 16:  # the schemas bound nesting long before this
        return 0
    if isinstance(value, dict):
        text = value.get("text")
        own = len(text) if isinstance(text, str) else 0
        return own + sum(_text_chars(v, depth + 1) for k, v in value.items() if k != "text")
    if isinstance(value, list):
        return sum(_text_chars(v, depth + 1) for v in value)
    return 0


def deadline(request: Request, limits: AdmissionLimits) -> float:
    """The call's deadline (``time.monotonic()`` seconds): now plus ``X-Request-Timeout`` (seconds, at most
    ``max_request_seconds``; that when the header is absent). 400 for a value that is not a positive number."""
    raw = request.headers.get(TIMEOUT_HEADER)
    seconds = limits.max_request_seconds
    if raw is not None:
        try:
            value = float(raw.strip().removesuffix("s"))
        except ValueError:
            value = -1.0
        if not 0 < value < math.inf:
            raise invalid([(f"{TIMEOUT_HEADER} (header)", f"{raw[:40]!r}: expected seconds, a number above 0")])
        seconds = min(value, limits.max_request_seconds)
    return time.monotonic() + seconds


async def until_disconnected(request: Request, work: Awaitable[T], poll: float = DISCONNECT_POLL_SECONDS) -> T:
    """``await work``, cancelled if the client disconnects first (then 499 ``CANCELLED``, which nobody reads)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.wait({task})
                raise ApiError(499, "the client closed the request")
    except asyncio.CancelledError:  # this request was cancelled (the server is stopping): so is the work
        task.cancel()
        await asyncio.wait({task})
        raise


def admit_job(request: Request, tenant: str, idempotency_key: str | None = None) -> None:
    """Raise ``ResourceExhaustedError`` when ``tenant`` already has ``tenant_jobs`` tuning jobs waiting or running
    (a retry of one of them under its ``Idempotency-Key`` passes: it creates nothing). Two creates racing in the
    same instant may both pass; the bound is for floods, not for exact accounting."""
    state = request.app.state
    limit = state.admission.limits.tenant_jobs
    store: Store = state.store
    active = []
    for job_state in (PENDING, RUNNING, CANCELLING):
        jobs, _ = store.list_jobs(tenant, state=job_state, page_size=limit + 1)
        active += jobs
    if len(active) < limit:
        return
    if idempotency_key and any(getattr(job, "idempotency_key", None) == idempotency_key for job in active):
        return
    raise ResourceExhaustedError(
        f"this tenant has {len(active)} tuning jobs waiting or running, the most allowed ({limit}); "
        "create more once some have ended, or cancel one",
        30.0,
    )
