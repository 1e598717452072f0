"""Dataset checks of uploads, so that no tenant's big file holds up another's upload.

    record = await checks.run(request, tenant, upload.size, shared, lambda checker, until: check(checker, until))

A file under ``TUNERY_UPLOAD_OWN_CHECKER_BYTES`` (default 4 MiB) is checked on the server's shared, warm checker
(a check of that size takes well under a second). A bigger one is checked in a checker process of its own:

- each tenant has at most one big check running (another is refused with 429 and ``Retry-After``), and the
  server at most ``MAX_BIG_CHECKS`` in all, so a tenant's big files never queue behind another tenant's;
- the check reads in flat memory and stops itself at ``CHECK_SHARE`` of ``TUNERY_UPLOAD_CHECK_SECONDS``
  (default 600): a file whose lines checked so far have no error is then kept, marked partly checked (how many
  lines and bytes), and the rest of it is checked when a tuning job reads it, before the job's first step (a bad
  line there fails the job, naming the line);
- the check is stopped, its process killed and its memory freed, as soon as its client goes away, or when the
  checker does not answer within ``TUNERY_UPLOAD_CHECK_SECONDS`` (it could not even start); the client then gets a
  504 that says how big the file was, how long the check ran, and how to proceed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tunery.errors import ResourceExhaustedError, ServingError
from tunery.settings import upload_check_seconds, upload_own_checker_bytes

T = TypeVar("T")
MIB = 2**20
MAX_BIG_CHECKS = 2
DISCONNECT_POLL_SECONDS = 0.5
CHECK_SHARE = 0.8
"""The share of ``TUNERY_UPLOAD_CHECK_SECONDS`` a big check reads lines for (the rest: its checker's start and
the tokenizer's load)."""


class BigChecks:
    """The big checks running now, by tenant (one each, ``MAX_BIG_CHECKS`` in all)."""

    def __init__(self) -> None:
        self.tenants: set[str] = set()
        self.lock = threading.Lock()

    def enter(self, tenant: str) -> None:
        with self.lock:
            if tenant in self.tenants:
                raise ResourceExhaustedError(
                    "another big upload of this tenant is being checked; upload this one when that check ends", 10.0
                )
            if len(self.tenants) >= MAX_BIG_CHECKS:
                raise ResourceExhaustedError(
                    f"{MAX_BIG_CHECKS} big uploads are being checked for other tenants; retry in a minute", 60.0
                )
            self.tenants.add(tenant)

    def leave(self, tenant: str) -> None:
        with self.lock:
            self.tenants.discard(tenant)


_big = BigChecks()


async def run(request: Request, tenant: str, size: int, shared: Any, check: Callable[[Any, float | None], T]) -> T:
    """``check(checker, until)`` on the shared checker for a small file (``until`` None: it reads every line),
    else on a checker of its own that stops reading at ``until`` (a ``time.time()``; module doc)."""
    if size < upload_own_checker_bytes():
        return await run_in_threadpool(check, shared, None)
    from tunery.api.deps import ROLE_ENV
    from tunery.serving.process import ModelHost

    _big.enter(tenant)
    limit = upload_check_seconds()
    own = ModelHost(env={ROLE_ENV: "upload-check"}, timeout=limit)
    try:
        task = asyncio.ensure_future(run_in_threadpool(check, own, time.time() + CHECK_SHARE * limit))
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if not task.done() and await request.is_disconnected():
                own.kill()  # the client is gone: nobody reads the answer, so the check ends now
        try:
            return task.result()
        except ServingError as exc:
            if exc.code != 504:
                raise
            raise ServingError(
                f"the check of this {size / MIB:.1f} MiB upload did not finish within {limit:g} s, so it was stopped "
                "and nothing was kept; split the file into smaller parts and upload each, or ask the operator to "
                "raise TUNERY_UPLOAD_CHECK_SECONDS",
                504,
            ) from None
    finally:
        own.kill()
        _big.leave(tenant)
