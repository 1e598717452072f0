"""``ModelHost``: the API process's handle on the model host subprocess; this module imports no torch.

    host = ModelHost()
    host.generate("smollm2-135m-instruct", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    host.close()

The host (``python -m tunery.serving.host``) starts on the first call and keeps its models loaded
between calls. One call runs at a time; generate calls that wait for it go together, as one batch.
Errors come back as exceptions that say which HTTP status to answer (``http_status``):

    DatasetError, ModelError, ConfigError, JobError   400  the request is wrong (DatasetError lists every field)
    NotFoundError                                     404  the model does not exist
    ServingError                                      .code: 503 the host would not start or died,
                                                      504 it timed out, 500 it failed with a bug

A host that dies or times out is killed; the call that finds it so raises ``ServingError`` and the
next call starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import IO, Any

from tunery.data.validation import Problem
from tunery.errors import (
    ConfigError,
    ConflictError,
    DatasetError,
    JobError,
    ModelError,
    NotFoundError,
    ServingError,
    TuneryError,
)
from tunery.serving.gemini import RequestProblem

HOST_COMMAND = [sys.executable, "-m", "tunery.serving.host"]
MAX_BATCH_ENV = "TUNERY_SERVING_MAX_BATCH"
DEFAULT_MAX_BATCH = 8
USER_ERRORS: dict[str, type[TuneryError]] = {
    cls.__name__: cls for cls in (ConfigError, DatasetError, JobError, ModelError, TuneryError)
}


class ModelHost:
    """Starts ``tunery.serving.host`` on first use and sends it one request at a time (thread-safe).

    ``env`` adds to (or overrides) this process's environment for the host; ``timeout`` is the most
    seconds one call may take, loading its model included; ``log_path`` receives the host's stderr
    (appended), which otherwise goes to this process's stderr; ``max_batch`` (default
    ``$TUNERY_SERVING_MAX_BATCH``, else 8) is the most generate calls sent together, 1 for none.
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        log_path: str | Path | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.env = dict(env or {})
        self.timeout = timeout
        self.log_path = Path(log_path) if log_path else None
        self.max_batch = max_batch if max_batch is not None else _max_batch()
        self._lock = threading.Lock()
        self._turn = threading.Condition()  # guards the line of generate calls and whether one is sending
        self._line: list[_Waiting] = []
        self._sending = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._buffer = b""
        self._last_id = 0

    @property
    def pid(self) -> int | None:
        """The running host's process id; None before the first call and after ``close``."""
        return self._proc.pid if self._proc is not None else None

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Run one op on the host and return its result; raises what the host reported (see the module doc)."""
        with self._lock:
            reply = self._call(op, fields)
        return _result(reply)

    def generate(
        self,
        model: str,
        request: dict[str, Any],
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
    ) -> dict[str, Any]:
        """Gemini's ``GenerateContentResponse`` for a generateContent body; ``model_version`` names the model in it.

        Calls that arrive while the host is busy wait in line; whichever caller gets the host next sends the
        oldest waiting ones for its model (up to ``max_batch``) as one ``generateBatch``.
        """
        waiting = _Waiting(
            {"model": model, "request": request, "maxPromptTokens": max_prompt_tokens, "modelVersion": model_version}
        )
        with self._turn:
            self._line.append(waiting)
        while self._claim(waiting):
            try:
                with self._lock:
                    self._generate_next(model)
            finally:
                with self._turn:
                    self._sending = False
                    self._turn.notify_all()
        reply = waiting.reply
        if isinstance(reply, BaseException):
            raise reply
        assert reply is not None
        return _result(reply)

    # The asynchronous interface the API awaits (never blocking an event loop or its shared thread pool).
    # Contract for every caller: ``timeout`` bounds the whole call (ServingError 504 past it); cancelling the
    # awaiting task (a client that went away) cancels the call, so it holds no batch row afterwards.

    async def agenerate(
        self,
        model: str,
        request: dict[str, Any],
        *,
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``generate``, awaited: Gemini's ``GenerateContentResponse``."""
        work = partial(self.generate, model, request, max_prompt_tokens, model_version)
        return await _awaited(work, timeout, "generateContent")

    async def astream(
        self,
        model: str,
        request: dict[str, Any],
        *,
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The answer as ``GenerateContentResponse`` chunks: each chunk's ``candidates[0].content.parts[0].text``
        is the text new since the previous chunk; the last chunk carries ``finishReason`` and
        ``usageMetadata``. Closing the iterator early cancels the call."""
        yield await self.agenerate(
            model, request, max_prompt_tokens=max_prompt_tokens, model_version=model_version, timeout=timeout
        )

    async def acount_tokens(
        self, model: str, request: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``count_tokens``, awaited."""
        return await _awaited(partial(self.count_tokens, model, request), timeout, "countTokens")

    def _claim(self, waiting: _Waiting) -> bool:
        """Wait while another caller sends; then send (True), unless ``waiting`` has been answered (False)."""
        with self._turn:
            while self._sending and waiting.reply is None:
                self._turn.wait()
            if waiting.reply is not None:
                return False
            self._sending = True
            return True

    def _generate_next(self, model: str) -> None:
        """Send the oldest waiting generate calls for ``model`` (the caller holds the lock) and hand out the replies."""
        with self._turn:
            batch = [w for w in self._line if w.request["model"] == model][: self.max_batch]
            self._line = [w for w in self._line if w not in batch]
        try:
            if len(batch) == 1:
                replies = [self._call("generate", batch[0].request)]
            else:
                reply = self._call("generateBatch", {"items": [w.request for w in batch]})
                replies = reply["result"]["replies"] if reply.get("ok") else [reply] * len(batch)
        except ServingError as exc:
            for w in batch:
                w.reply = ServingError(str(exc), exc.code)
            return
        except BaseException as exc:
            for w in batch:
                w.reply = ServingError(f"the generate call failed: {exc!r}", 500)
            raise
        for w, reply in zip(batch, replies, strict=True):
            w.reply = reply

    def _call(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """One request and its reply (the caller holds the lock); a host that fails is stopped, ServingError raised."""
        self._last_id += 1
        line = json.dumps({"id": self._last_id, "op": op, **fields}) + "\n"
        proc = self._running(op)
        try:
            return self._exchange(proc, line, op)
        except ServingError:
            self._stop(kill=True)
            raise

    def count_tokens(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        """Gemini's ``CountTokensResponse`` (``{"totalTokens": n}``) for a countTokens body."""
        return self.call("countTokens", model=model, request=request)

    def validate(self, path: str | Path, model: str, max_length: int, batch_size: int) -> dict[str, Any]:
        """``{exampleCount, problems, supervisedTuningDataStats}`` for a JSONL file, tokenized for ``model``;
        the statistics count steps for ``batch_size`` and the automatic epoch count."""
        return self.call("validate", path=str(path), model=model, maxLength=max_length, batchSize=batch_size)

    def evict(self, model: str) -> bool:
        """Drop a loaded model (its directory was deleted); whether it was loaded. Starts no host for nothing."""
        with self._lock:
            running = self._proc is not None and self._proc.poll() is None
        return bool(running and self.call("evict", model=model)["evicted"])

    def ping(self) -> dict[str, Any]:
        """``{pid, models}``; starts the host if it is not running."""
        return self.call("ping")

    def close(self) -> None:
        """Stop the host: close its stdin so it exits on its own, kill it if it does not within 10 s."""
        with self._lock:
            self._stop(kill=False)

    def __enter__(self) -> ModelHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _running(self, op: str) -> subprocess.Popen[bytes]:
        """The host process, started if there is none; a host found dead is reported once, then replaced."""
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            self._stop(kill=True)
            raise ServingError(f"the model host had exited (code {code}) before {op}; the next call restarts it")
        if self._proc is None:
            self._start()
        assert self._proc is not None
        return self._proc

    def _start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                HOST_COMMAND,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env={**os.environ, **self.env},
            )
        except OSError as exc:
            self._stop(kill=True)
            raise ServingError(f"cannot start the model host: {exc}") from exc
        self._buffer = b""

    def _exchange(self, proc: subprocess.Popen[bytes], line: str, op: str) -> dict[str, Any]:
        """Send one request line and read its reply; ``ServingError`` if the host dies, stalls or garbles it."""
        assert proc.stdin is not None
        try:
            proc.stdin.write(line.encode("utf-8"))
            proc.stdin.flush()
        except OSError:  # BrokenPipeError: it died
            raise ServingError(self._died(proc, op)) from None
        raw = self._read_line(proc, op)
        try:
            reply = json.loads(raw)
        except json.JSONDecodeError:
            raise ServingError(f"the model host answered {op} with something not JSON: {raw[:200]!r}", 500) from None
        if not isinstance(reply, dict) or reply.get("id") != self._last_id:
            raise ServingError(f"the model host answered {op} out of turn: {raw[:200]!r}", 500)
        return reply

    def _read_line(self, proc: subprocess.Popen[bytes], op: str) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ServingError(f"the model host did not answer {op} within {self.timeout:g} s; it was stopped", 504)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise ServingError(self._died(proc, op))
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _died(self, proc: subprocess.Popen[bytes], op: str) -> str:
        try:
            code: int | str | None = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = "unknown"
        where = f"; see {self.log_path}" if self.log_path else ""
        return f"the model host exited (code {code}) while running {op}{where}; the next call restarts it"

    def _stop(self, kill: bool) -> None:
        """End the host process (if any) and forget it; the caller holds the lock."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if kill:
                proc.kill()
            _close(proc.stdin)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _close(proc.stdout)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._buffer = b""


class _Waiting:
    """A generate call in line for the host, and then its reply (or the error that ended its batch)."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.reply: dict[str, Any] | BaseException | None = None


def _max_batch() -> int:
    value = os.environ.get(MAX_BATCH_ENV, str(DEFAULT_MAX_BATCH))
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{MAX_BATCH_ENV}={value!r}: expected a whole number of at least 1")
    return int(value)


def _result(reply: dict[str, Any]) -> dict[str, Any]:
    """An ``ok`` reply's result; the error it reports, raised."""
    if reply.get("ok"):
        return reply["result"]
    raise _error(reply.get("error") or {})


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):  # a broken pipe, flushing on close
            stream.close()


def _error(error: dict[str, Any]) -> TuneryError:
    """The exception for an ``ok: false`` reply."""
    code, message = error.get("code", 500), str(error.get("message", "the model host failed"))
    if code == 404:
        return NotFoundError(message)
    if code != 400:
        return ServingError(message, int(code))
    cls = USER_ERRORS.get(error.get("type", ""), TuneryError)
    if cls is DatasetError and "problems" in error:
        problems: list[Problem] = [
            RequestProblem("request", p.get("line", 0), p["field"], p["message"], p.get("severity", "error"))
            for p in error["problems"]
        ]
        return DatasetError(error.get("summary", message), problems)
    return cls(message)


def http_status(exc: BaseException) -> int:
    """The HTTP status that answers ``exc``: 404 not found, 409 conflict, 400 other user errors, else 5xx."""
    if isinstance(exc, ServingError):
        return exc.code
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, TuneryError):
        return 400
    return 500


_CALLERS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="tunery-host-call")
"""Threads that wait on the host for the async interface: never the event loop's shared pool."""


async def _awaited(work: Callable[[], dict[str, Any]], timeout: float | None, what: str) -> dict[str, Any]:
    future = asyncio.get_running_loop().run_in_executor(_CALLERS, work)
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise ServingError(f"{what} did not finish within {timeout:g} s", 504) from None
