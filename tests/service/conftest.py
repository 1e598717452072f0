"""A real ``tunery serve`` for the service tests: a uvicorn subprocess on an ephemeral loopback port.

Each ``service()`` gets its own ``$TUNERY_HOME`` (SQLite job store, uploads, tuned models) and a data
root holding a copy of the tiny model (``tiny/``) and the JSONL fixtures. ``restart()`` starts a new
server on the same home and database, as an operator would after a crash.

    .venv/bin/python -m pytest tests/service -x -q
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tunery.jobs.store import ENDED, Store

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
READY = "tunery serving on "


class Service:
    """One service: its directories, its server process, and an HTTP client for it."""

    def __init__(self, root: Path, tiny_model: Path, train: Path, workers: int, database_url: str | None) -> None:
        self.home = root / "home"
        self.data_root = root / "data"
        self.data_root.mkdir(parents=True)
        shutil.copytree(tiny_model, self.data_root / "tiny")
        for name in ("classify_gemini.jsonl", "classify_openai.jsonl"):
            shutil.copy(DATA_DIR / name, self.data_root / name)
        shutil.copytree(DATA_DIR / "bad", self.data_root / "bad")
        shutil.copy(train, self.data_root / "long.jsonl")
        self.workers = workers
        self.env = {
            **os.environ,
            "TUNERY_HOME": str(self.home),
            "TUNERY_DATA_ROOT": str(self.data_root),
            "OMP_NUM_THREADS": "1",
            "TUNERY_WARM_START": "0",  # no model host or checker before a test needs one (the suite's CPU)
        }
        if database_url:
            self.env["TUNERY_DATABASE_URL"] = database_url
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.client: httpx.Client | None = None
        self.output: list[str] = []
        self._pump_thread: threading.Thread | None = None
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """The server's job store, opened directly (to look behind the API, as an operator could)."""
        if self._store is None:
            self._store = Store(self.env.get("TUNERY_DATABASE_URL") or f"sqlite:///{self.home / 'tunery.db'}")
        return self._store

    def start(self, *extra: str, timeout: float = 90) -> Service:
        command = [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--workers", str(self.workers), *extra]
        self.process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        ready = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, args=(self.process, ready), daemon=True)
        self._pump_thread.start()
        if not ready.wait(timeout) or not self.url:
            self.kill()
            raise RuntimeError("tunery serve did not start:\n" + "".join(self.output))
        self.client = httpx.Client(base_url=self.url, timeout=60)
        return self

    def _pump(self, process: subprocess.Popen, ready: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)
            if line.startswith(READY) and not ready.is_set():
                self.url = line[len(READY) :].strip()
                ready.set()
        ready.set()

    def headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def create_key(self, tenant: str) -> str:
        """``tunery keys create --tenant T``; the key is the last line of its output."""
        result = subprocess.run(
            [sys.executable, "-m", "tunery", "keys", "create", "--tenant", tenant],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip().splitlines()[-1]

    def wait_job(self, name: str, key: str | None = None, timeout: float = 180, until: Any = ENDED) -> dict:
        """Poll ``GET /v1/{name}`` until its state is in ``until``; returns the job resource."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while True:
            job = self.client.get(f"/v1/{name}", headers=self.headers(key)).raise_for_status().json()
            if job["state"] in until:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still {job['state']} after {timeout} s:\n{''.join(self.output)}")
            time.sleep(0.2)

    def events(self, name: str, key: str | None = None) -> list[dict]:
        assert self.client is not None
        response = self.client.get(f"/v1/{name}/events", params={"pageSize": 1000}, headers=self.headers(key))
        return response.raise_for_status().json()["events"]

    def stop(self, sig: int) -> int:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(60)
        if self._pump_thread is not None:
            self._pump_thread.join(10)  # the pipe is at EOF once the server is gone
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        return code

    def terminate(self) -> int:
        return self.stop(signal.SIGTERM)

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def restart(self) -> Service:
        self.terminate()
        return self.start()

    def close(self) -> None:
        """Kill the server and any worker it left (workers outlive a killed server while they checkpoint)."""
        self.kill()
        for job in self.store.runnable_jobs([store_owner()]):
            if job.worker_pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(job.worker_pid, signal.SIGKILL)
        self.store.close()


def store_owner() -> str:
    import socket

    return f"server@{socket.gethostname()}"


@pytest.fixture(autouse=True)
def _embedded_sdk() -> Iterator[None]:
    """Each test starts with the SDK embedded (no ``init``, no endpoint in the environment) and leaves no
    remote client behind."""
    from tunery.sdk import client as remote

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(remote.ENDPOINT_ENV, raising=False)
        mp.delenv(remote.KEY_ENV, raising=False)
        remote.reset()
        yield
        remote.reset()


@pytest.fixture
def service(tmp_path: Path, tiny_model: Path, make_train: Callable[..., Path]) -> Iterator[Callable[..., Service]]:
    """``service(workers=1, database_url=None, start=True)`` → a running ``Service``; stopped after the test."""
    started: list[Service] = []

    def factory(workers: int = 1, database_url: str | None = None, start: bool = True) -> Service:
        svc = Service(tmp_path / f"service-{len(started)}", tiny_model, make_train(400), workers, database_url)
        started.append(svc)
        return svc.start() if start else svc

    yield factory
    for svc in started:
        svc.close()
