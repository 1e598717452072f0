"""``ModelHost``: the API process's handle on the model host subprocess; this module imports no torch.

    host = ModelHost()
    host.generate("smollm2-135m-instruct", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    await host.agenerate(model, body, timeout=30)                 # the same, awaited
    async with contextlib.aclosing(host.astream(model, body)) as chunks:
        async for chunk in chunks: ...                             # text as it is generated
    host.close()

The host (``python -m tunery.serving.host``) starts on the first call and keeps its models loaded
between calls. Calls are multiplexed on its pipes: any number are in flight at once (the host batches
generations continuously), each reply is matched to its call by id, so one slow call never holds up
another's reply. A reader thread takes the host's replies and a writer thread sends the requests, so no
caller, and never an event loop, blocks on a pipe.

Errors come back as exceptions that say which HTTP status to answer (``tunery.errors.http_status``):

    DatasetError, ModelError, ConfigError, JobError   400  the request is wrong (DatasetError lists every field)
    NotFoundError                                     404  the model does not exist
    ServingError                                      .code: 503 the host would not start or died,
                                                      504 a call or the host timed out, 500 a bug

A call past its ``timeout`` raises ``ServingError`` 504 and is cancelled in the host (its row leaves the
batch), as is a call whose awaiting task is cancelled. Then the host is asked for a ``ping``: a host that
does not answer it within ``probe_timeout`` (stopped with SIGSTOP, or stuck) is killed, which fails the
calls in flight with a 504; a host that dies fails them with a 503. The next call starts a fresh host.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from tunery import lifeline, settings
from tunery.data.validation import Problem
from tunery.errors import (
    ConfigError,
    DatasetError,
    JobError,
    ModelError,
    ServingError,
    TuneryError,
    error_for_status,
    http_status,  # noqa: F401 - the status each of these errors answers with (tunery.errors)
)
from tunery.serving.gemini import RequestProblem

HOST_COMMAND = [sys.executable, "-m", "tunery.serving.host"]
MAX_BATCH_ENV = "TUNERY_SERVING_MAX_BATCH"
DEFAULT_MAX_BATCH = 8
PROBE_TIMEOUT = 10.0
EVICT_TIMEOUT = 10.0  # a delete waits no longer for the host (its generations on the model end within a step)
READY, STARTING, NOT_STARTED = "ready", "starting", "not started"
USER_ERRORS: dict[str, type[TuneryError]] = {
    cls.__name__: cls for cls in (ConfigError, DatasetError, JobError, ModelError, TuneryError)
}

Sink = Callable[[dict[str, Any] | ServingError], None]
"""Where a call's messages go (its chunks and final reply, or the error that ended the host), from any thread."""


@runtime_checkable
class GenerationHost(Protocol):
    """What the API and batch prediction call on a model host: ``ModelHost`` (tunery's own engine, in a subprocess)
    and ``tunery.serving.vllm.VllmHost`` (a vLLM server) both are one. Requests and answers are Gemini's JSON
    (generateContent, countTokens bodies); errors are ``TuneryError``s. The awaited calls' ``timeout`` bounds the
    whole call (``ServingError`` 504 past it) and cancelling the awaiting task cancels the call."""

    def generate(
        self,
        model: str,
        request: dict[str, Any],
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
    ) -> dict[str, Any]: ...

    def generate_batch(self, items: list[dict[str, Any]]) -> Sequence[dict[str, Any] | BaseException]: ...

    def count_tokens(self, model: str, request: dict[str, Any]) -> dict[str, Any]: ...

    async def agenerate(
        self,
        model: str,
        request: dict[str, Any],
        *,
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]: ...

    def astream(
        self,
        model: str,
        request: dict[str, Any],
        *,
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def acount_tokens(
        self, model: str, request: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]: ...

    def evict(self, model: str) -> bool: ...

    def close(self) -> None: ...


class ModelHost:
    """Starts ``tunery.serving.host`` on first use and multiplexes calls on it (thread-safe, and awaitable).

    ``env`` adds to (or overrides) this process's environment for the host; ``timeout`` is the most
    seconds one call may take, loading its model included, unless the call says otherwise; ``log_path``
    receives the host's stderr (appended), which otherwise goes to this process's stderr; ``max_batch``
    (default ``$TUNERY_SERVING_MAX_BATCH``, else 8) is the most rows the host decodes together on one base;
    ``probe_timeout`` is how long a host may take to answer a ``ping`` after a call timed out before it is
    taken for stuck and killed.
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        log_path: str | Path | None = None,
        max_batch: int | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.env = dict(env or {})
        self.timeout = timeout
        self.log_path = Path(log_path) if log_path else None
        self.max_batch = max_batch if max_batch is not None else settings.serving_max_batch()
        self.env.setdefault(MAX_BATCH_ENV, str(self.max_batch))
        self.probe_timeout = probe_timeout
        self._lock = threading.Lock()  # guards starting and stopping the host
        self._host: _Connection | None = None
        self._ids = itertools.count(1)
        self._warm: dict[str, list[str]] | None = None  # what ``warm`` loads, again after the host dies
        self._readiness = NOT_STARTED
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running host's process id; None before the first call and after ``close`` or a kill."""
        host = self._host
        return host.proc.pid if host is not None and host.error is None else None

    @property
    def readiness(self) -> str:
        """``"ready"`` (a host runs and what ``warm`` named is loaded), ``"starting"`` (it loads), ``"not started"``
        (the next call starts one), or ``"failed: ..."`` (the warm-up failed; the next call tries again)."""
        if self._readiness == READY and self.pid is None:
            return NOT_STARTED
        return self._readiness

    def warm(self, models: list[str] = (), tokenizers: list[str] = ()) -> None:  # type: ignore[assignment]
        """Start the host now, in the background, and load ``models`` (for generation) and ``tokenizers`` (for
        checks) in it; ``readiness`` says when that is done. A host that dies later is started and loaded again
        at once, so the next call waits for no more than that load."""
        self._warm = {"models": list(models), "tokenizers": list(tokenizers)}
        self._readiness = STARTING
        threading.Thread(target=self._warm_up, name="tunery-host-warm", daemon=True).start()

    def _warm_up(self) -> None:
        assert self._warm is not None
        for attempt in (1, 2):  # after a death the first call is told of it; the second starts a fresh host
            try:
                self.call("warm", **self._warm)
                self._readiness = READY
                return
            except ServingError as exc:
                if exc.code == 503 and attempt == 1 and not self._closed:
                    continue
                self._readiness = f"failed: {exc}"
            except TuneryError as exc:
                self._readiness = f"failed: {exc}"
            return

    def _on_exit(self) -> None:
        """A host ended: one that was not closed is warmed again at once (when ``warm`` was asked for)."""
        if self._warm is not None and not self._closed:
            self._readiness = STARTING
            threading.Thread(target=self._warm_up, name="tunery-host-warm", daemon=True).start()

    # --- synchronous calls (the CLI, the SDK, the tests; a thread each) --------------------------------------

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Run one op on the host and return its result; raises what the host reported (see the module doc)."""
        inbox: queue.SimpleQueue[dict[str, Any] | ServingError] = queue.SimpleQueue()
        host, call_id = self._send(op, fields, inbox.put)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                message = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._give_up(host, call_id)
                raise ServingError(f"the model host did not answer {op} within {limit:g} s", 504) from None
            if isinstance(message, ServingError):
                raise message
            if "chunk" not in message:
                return _result(message)

    def generate(
        self,
        model: str,
        request: dict[str, Any],
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
    ) -> dict[str, Any]:
        """Gemini's ``GenerateContentResponse`` for a generateContent body; ``model_version`` names the model in it."""
        return self.call("generate", **_generate_fields(model, request, max_prompt_tokens, model_version))

    def generate_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any] | TuneryError]:
        """Several generate requests (``{model, request, maxPromptTokens?, modelVersion?}``) in one call, decoded
        in the running batches; each one's response, or the error it alone failed with, in order."""
        replies = self.call("generateBatch", items=items)["replies"]
        out: list[dict[str, Any] | TuneryError] = []
        for reply in replies:
            try:
                out.append(_result(reply))
            except TuneryError as exc:
                out.append(exc)
        return out

    def count_tokens(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        """Gemini's ``CountTokensResponse`` (``{"totalTokens": n}``) for a countTokens body."""
        return self.call("countTokens", model=model, request=request)

    def validate(
        self,
        path: str | Path,
        model: str,
        max_length: int,
        batch_size: int,
        media_dir: str | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        """``{exampleCount, problems, supervisedTuningDataStats, complete, checkedLines, checkedBytes}`` for a
        JSONL file, tokenized for ``model``; the statistics count steps for ``batch_size`` and the automatic epoch
        count. ``files/{id}`` media parts resolve in ``media_dir`` (the uploader's media uploads) only. ``until``
        (a ``time.time()``): the check stops reading lines then (``complete`` false)."""
        return self.call(
            "validate",
            path=str(path),
            model=model,
            maxLength=max_length,
            batchSize=batch_size,
            mediaDir=media_dir,
            until=until,
        )

    def evict(self, model: str, timeout: float = EVICT_TIMEOUT) -> bool:
        """Drop a loaded model (its directory was deleted): its running generations end at once with a 404 saying
        so (before the host's next decode step); whether it was loaded. Starts no host for nothing."""
        host = self._host
        if host is None or host.error is not None or host.proc.poll() is not None:
            return False
        return bool(self.call("evict", timeout=timeout, model=model)["evicted"])

    def ping(self) -> dict[str, Any]:
        """``{pid, models, running, waiting}``; starts the host if it is not running."""
        return self.call("ping")

    # --- the asynchronous interface the API awaits ------------------------------------------------------------
    # For every caller: ``timeout`` bounds the whole call (ServingError 504 past it; None: the host's timeout);
    # cancelling the awaiting task (a client that went away) cancels the call, so it holds no batch row after.

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
        fields = _generate_fields(model, request, max_prompt_tokens, model_version)
        async for message in self._messages("generate", fields, timeout, "generateContent"):
            if "chunk" not in message:
                return _result(message)
        raise ServingError("the model host ended generateContent without a reply", 500)

    async def astream(
        self,
        model: str,
        request: dict[str, Any],
        *,
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The answer as ``GenerateContentResponse`` chunks, read from the running batch as it decodes: each
        chunk's ``candidates[0].content.parts[0].text`` is the text new since the previous chunk; the last chunk
        carries ``finishReason`` and ``usageMetadata``. Closing the iterator early cancels the call (close it:
        ``contextlib.aclosing``). An error before the first chunk is raised by the first ``__anext__``."""
        fields = {**_generate_fields(model, request, max_prompt_tokens, model_version), "stream": True}
        async for message in self._messages("generate", fields, timeout, "streamGenerateContent"):
            yield message["chunk"] if "chunk" in message else _result(message)

    async def acount_tokens(
        self, model: str, request: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``count_tokens``, awaited."""
        async for message in self._messages(
            "countTokens", {"model": model, "request": request}, timeout, "countTokens"
        ):
            return _result(message)
        raise ServingError("the model host ended countTokens without a reply", 500)

    async def _messages(
        self, op: str, fields: dict[str, Any], timeout: float | None, what: str
    ) -> AsyncIterator[dict[str, Any]]:
        """The messages of one call, up to its final reply; cancelled in the host if left before it."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[dict[str, Any] | ServingError] = asyncio.Queue()

        def sink(message: dict[str, Any] | ServingError) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(inbox.put_nowait, message)

        host, call_id = self._send(op, fields, sink)
        limit = self.timeout if timeout is None else timeout
        deadline = loop.time() + limit
        finished = False
        try:
            while True:
                try:
                    message = await asyncio.wait_for(inbox.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise ServingError(f"{what} did not finish within {limit:g} s", 504) from None
                if isinstance(message, ServingError):
                    finished = True
                    raise message
                if "chunk" not in message:
                    finished = True
                yield message
                if finished:
                    return
        finally:
            if not finished:
                self._give_up(host, call_id)

    # --- the connection --------------------------------------------------------------------------------------

    def _send(self, op: str, fields: dict[str, Any], sink: Sink) -> tuple[_Connection, int]:
        """Register a call and queue its request line; ServingError 503 if the host is found dead (reported once,
        then replaced by the next call)."""
        call_id = next(self._ids)
        line = json.dumps({"id": call_id, "op": op, **fields}) + "\n"
        with self._lock:
            host = self._host
            if host is not None and host.error is not None:
                self._host = None
                if host.reported:
                    host = None
                else:
                    host.reported = True
                    raise ServingError(f"{host.error} before {op}; the next call restarts it", host.error.code)
            if host is None:
                host = self._host = _Connection.start(self.env, self.log_path, self._on_exit)
            host.pending[call_id] = sink
        host.write(line)
        return host, call_id

    def _give_up(self, host: _Connection, call_id: int) -> None:
        """The caller no longer waits for ``call_id`` (timed out, cancelled): cancel it in the host, and check that
        the host still answers (else it is killed)."""
        if host.pending.pop(call_id, None) is None or host.error is not None:
            return
        cancel_id = next(self._ids)
        host.pending[cancel_id] = lambda message: host.pending.pop(cancel_id, None)
        host.write(json.dumps({"id": cancel_id, "op": "cancel", "target": call_id}) + "\n")
        host.probe(next(self._ids), self.probe_timeout)

    def close(self) -> None:
        """Stop the host: close its stdin so it exits on its own, kill it if it does not within 10 s."""
        self._closed = True
        with self._lock:
            host, self._host = self._host, None
        if host is not None:
            host.stop(ServingError("the model host was closed", 503), kill=False, told=True)

    def kill(self) -> None:
        """Stop the host now (SIGKILL, its memory freed), failing the calls in flight with a 503."""
        self._closed = True
        with self._lock:
            host, self._host = self._host, None
        if host is not None:
            host.stop(ServingError("the model host was stopped", 503), kill=True, told=True)

    def __enter__(self) -> ModelHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Connection:
    """One host process: a writer thread sends request lines, a reader thread hands each reply to its call."""

    def __init__(
        self, proc: subprocess.Popen[bytes], log: IO[bytes] | None, on_exit: Callable[[], None] | None = None
    ) -> None:
        self.proc, self.log, self.on_exit = proc, log, on_exit
        self.pending: dict[int, Sink] = {}
        self.error: ServingError | None = None  # why it ended, once it has
        self.reported = False  # whether a call has been told (no call was in flight to be told)
        self.outbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.probing = threading.Lock()
        self.done = threading.Lock()
        threading.Thread(target=self._write_loop, name="tunery-host-write", daemon=True).start()
        threading.Thread(target=self._read_loop, name="tunery-host-read", daemon=True).start()

    @classmethod
    def start(
        cls, env: dict[str, str], log_path: Path | None, on_exit: Callable[[], None] | None = None
    ) -> _Connection:
        log = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = log_path.open("ab")
        try:
            env = {**os.environ, **env, **lifeline.child_env()}
            proc = subprocess.Popen(HOST_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        except OSError as exc:
            if log is not None:
                log.close()
            raise ServingError(f"cannot start the model host: {exc}") from exc
        return cls(proc, log, on_exit)

    def write(self, line: str) -> None:
        self.outbox.put(line)

    def _write_loop(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        while True:
            line = self.outbox.get()
            if line is None or self.error is not None:
                _close(stdin)
                return
            try:
                stdin.write(line.encode("utf-8"))
                stdin.flush()
            except (OSError, ValueError):  # it died; the reader reports it
                return

    def _read_loop(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for raw in iter(stdout.readline, b""):
            try:
                message = json.loads(raw)
                sink = self.pending.get(message.get("id"))
            except (json.JSONDecodeError, AttributeError):
                self.stop(ServingError(f"the model host wrote something not a reply: {raw[:200]!r}", 500), kill=True)
                _close(stdout)
                return
            if sink is None:
                continue  # a call that gave up
            if "chunk" not in message:
                self.pending.pop(message["id"], None)
            sink(message)
        try:
            code: int | str | None = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = "unknown"
        self.stop(ServingError(f"the model host exited (code {code})", 503), kill=True)
        _close(stdout)

    def probe(self, ping_id: int, timeout: float) -> None:
        """Ask for a ping in the background; kill the host if it does not answer within ``timeout``."""
        if not self.probing.acquire(blocking=False):
            return  # one probe at a time
        answered = threading.Event()
        self.pending[ping_id] = lambda message: answered.set()

        def wait() -> None:
            try:
                if not answered.wait(timeout) and self.error is None:
                    error = ServingError(f"the model host stopped answering (no ping reply within {timeout:g} s)", 504)
                    self.stop(error, kill=True, told=True)
            finally:
                self.pending.pop(ping_id, None)
                self.probing.release()

        self.write(json.dumps({"id": ping_id, "op": "ping"}) + "\n")
        threading.Thread(target=wait, name="tunery-host-probe", daemon=True).start()

    def stop(self, error: ServingError, kill: bool, told: bool = False) -> None:
        """End the process (if it runs) and fail every call still waiting with ``error``; the next call is told
        too unless one was waiting (or ``told``: the host was stopped on purpose), then gets a fresh host."""
        with self.done:
            if self.error is not None:
                return
            self.error = error
        self.reported = told or bool(self.pending)
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
        self.outbox.put(None)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _close(self.proc.stdin)
        failure = ServingError(f"{error}; the next call restarts it", error.code)
        for sink in list(self.pending.values()):
            sink(failure)
        self.pending.clear()
        if self.log is not None:
            self.log.close()
        if self.on_exit is not None:
            self.on_exit()


def _generate_fields(
    model: str, request: dict[str, Any], max_prompt_tokens: int | None, model_version: str | None
) -> dict[str, Any]:
    return {"model": model, "request": request, "maxPromptTokens": max_prompt_tokens, "modelVersion": model_version}


def _result(reply: dict[str, Any]) -> dict[str, Any]:
    """An ``ok`` reply's result; the error it reports, raised."""
    if reply.get("ok"):
        return reply["result"]
    raise _error(reply.get("error") or {})


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError, ValueError):  # a broken pipe, flushing on close
            stream.close()


def _error(error: dict[str, Any]) -> TuneryError:
    """The exception for an ``ok: false`` reply."""
    code, message = error.get("code", 500), str(error.get("message", "the model host failed"))
    found = error_for_status(code, message)
    if found is not None:
        return found
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
