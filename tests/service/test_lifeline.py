"""No process outlives the one it serves: SIGKILL a parent, and its model host, checker and job worker are gone
within ``tunery.lifeline``'s bound (0.25 s poll; a worker gets ``TUNERY_ORPHAN_GRACE_SECONDS`` to checkpoint).

    .venv/bin/python -m pytest tests/service/test_lifeline.py -x -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.service.test_faults import paused_at, small_job

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
BOUND = 2.0  # the stated bound for a host or checker (0.25 s poll), with room for a busy machine


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone_within(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive ``seconds`` after now (none, if every one ended in time)."""
    deadline = time.monotonic() + seconds
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def children(pid: int, needle: str) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True) if needle in " ".join(p.cmdline())]


def test_a_killed_server_leaves_no_model_host_checker_or_worker(service):
    """A server with a running job (held at a step) and its model host and checker (started with it: /healthz
    says when both are ready) is SIGKILLed: the host and the checker are gone within 2 s, the worker within its
    grace."""
    svc = service(start=False)
    svc.env["TUNERY_FAULT_PAUSE_AT"] = "step 1"
    svc.env["TUNERY_ORPHAN_GRACE_SECONDS"] = "1"
    svc.env["TUNERY_WARM_START"] = "1"  # the host and the checker start with the server
    svc.env["TUNERY_WARM_MODELS"] = ""  # the host imports its engine only (the suite's CPU)
    svc.env["TUNERY_UPLOAD_MODEL"] = str(svc.data_root / "tiny")  # the checker loads the tiny tokenizer
    svc.start()
    job = small_job(svc)
    paused_at(svc, job)
    deadline = time.monotonic() + 120
    while (health := svc.client.get("/healthz").json()) != {"status": "ok", "modelHost": "ready", "checker": "ready"}:
        assert time.monotonic() < deadline and "failed" not in str(health), health
        time.sleep(0.1)
    assert svc.process is not None
    server = svc.process.pid
    hosts = children(server, "tunery.serving.host")
    workers = children(server, "tunery.jobs.worker")
    assert len(hosts) == 2 and len(workers) == 1, (hosts, workers)
    svc.kill()
    started = time.monotonic()
    assert gone_within(hosts, BOUND) == [], "a model host outlived its server"
    assert gone_within(workers, BOUND + 1) == [], "a worker outlived its server and its grace"
    assert time.monotonic() - started < BOUND + 1


def test_tunery_predict_killed_leaves_no_model_host(tmp_path, tiny_model):
    """``tunery predict MODEL --input --output`` SIGKILLed mid-run: its model host is gone within 2 s."""
    source = tmp_path / "requests.jsonl"
    contents = [{"role": "user", "parts": [{"text": "say something long"}]}]
    line = {"request": {"contents": contents, "generationConfig": {"maxOutputTokens": 4000}}}
    source.write_text("\n".join(json.dumps(line) for _ in range(20000)) + "\n")
    command = [sys.executable, "-m", "tunery", "predict", str(tiny_model), "--input", str(source)]
    command += ["--output", str(tmp_path / "out.jsonl")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "predict.log").open("wb")
    predict = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (hosts := children(predict.pid, "tunery.serving.host")):
            assert predict.poll() is None and time.monotonic() < deadline, (tmp_path / "predict.log").read_text()
            time.sleep(0.1)
        time.sleep(1)  # the host is loading or decoding now
        predict.send_signal(signal.SIGKILL)
        predict.wait(10)
        assert gone_within(hosts, BOUND) == [], "the model host outlived tunery predict"
    finally:
        log.close()
        if predict.poll() is None:
            predict.kill()
            predict.wait()
