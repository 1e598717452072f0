"""``tunery files`` and ``tunery jobs`` against a real ``tunery serve``, and ``tunery jobs`` with no server.

.venv/bin/python -m pytest tests/service/test_cli_remote.py -x -q
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

from typer.testing import CliRunner

from tunery.cli import app
from tunery.jobs import Store
from tunery.jobs.local import TENANT
from tunery.sdk import client as remote
from tunery.tuning.spec import TuningSpec

runner = CliRunner()


def invoke(*args: Any, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def create_job(svc, key: str, dataset: str, **hyper: int) -> dict:
    body = {
        "baseModel": "tiny",
        "supervisedTuningSpec": {"trainingDatasetUri": dataset, "hyperParameters": hyper},
        "labels": {"team": "support"},
    }
    response = svc.client.post("/v1/tuningJobs", json=body, headers=svc.headers(key))
    assert response.status_code == 201, response.text
    return response.json()


def test_upload_then_list_get_and_watch_a_job_to_success(service):
    svc = service()
    key = svc.create_key("acme")
    server = ["--endpoint", svc.url, "--api-key", key]

    good = svc.data_root / "classify_gemini.jsonl"
    result = invoke("files", "upload", good, "--model", "tiny", *server)
    assert result.exit_code == 0, result.output
    file_name = re.search(r"^files/\w+$", result.output, re.M).group(0)
    assert "10 examples, 0 truncated (tokenized with tiny)" in result.output
    assert "input (prompt)" in result.output and "output (trained)" in result.output

    bad = svc.data_root / "bad" / "mixed.jsonl"
    result = invoke("files", "upload", bad, "--model", "tiny", *server)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if re.match(rf"{re.escape(str(bad))}:\d+: ", line)]
    assert len(lines) >= 5 and all(re.match(r".+:\d+: [\w\[\].]+: .+", line) for line in lines)
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers)

    env = {remote.ENDPOINT_ENV: svc.url, remote.KEY_ENV: key}  # the same server, named by the environment
    listed = json.loads(invoke("files", "list", "--json", env=env).output)
    assert [f["name"] for f in listed] == [file_name]  # the bad file was not kept
    job = create_job(svc, key, file_name, epochCount=2, batchSize=4)

    watch = subprocess.run(
        [sys.executable, "-m", "tunery", "jobs", "watch", job["name"].split("/")[1], *server],
        capture_output=True,
        text=True,
        timeout=300,
        env={**svc.env, "COLUMNS": "160"},
    )
    assert watch.returncode == 0, watch.stdout + watch.stderr
    assert "6/6" in watch.stdout and "loss" in watch.stdout and "tok/s" in watch.stdout  # the progress bar
    assert "SUCCEEDED" in watch.stdout and f"tuned model models/{job['name'].split('/')[1]}" in watch.stdout

    listed = json.loads(
        invoke("jobs", "list", "--json", "--state", "succeeded", "--label", "team=support", *server).output
    )
    assert [j["name"] for j in listed] == [job["name"]]
    assert json.loads(invoke("jobs", "list", "--json", "--label", "team=sales", env=env).output) == []
    table = invoke("jobs", "list", env=env)
    assert job["name"] in table.output and "SUCCEEDED" in table.output
    shown = json.loads(invoke("jobs", "get", job["name"], "--json", env=env).output)
    assert shown["state"] == "JOB_STATE_SUCCEEDED" and shown["tunedModel"]["model"].startswith("models/")
    text = invoke("jobs", "get", job["name"], env=env).output
    assert "JOB_STATE_SUCCEEDED" in text and "examples" in text and shown["tunedModel"]["endpoint"] in text

    deleted = invoke("files", "delete", file_name, env=env)
    assert deleted.exit_code == 0 and file_name in deleted.output
    assert json.loads(invoke("files", "list", "--json", env=env).output) == []
    missing = invoke("jobs", "get", "20000101000000000000000000", env=env)
    assert missing.exit_code == 1 and "not found" in missing.output
    refused = invoke("jobs", "list", "--endpoint", svc.url, "--api-key", "tk_0_wrong")
    assert refused.exit_code == 1 and svc.url.rstrip("/") in refused.output


def test_cancel_then_watch_exits_1_with_the_reason(service):
    svc = service()
    key = svc.create_key("acme")
    server = ["--endpoint", svc.url, "--api-key", key]
    job = create_job(svc, key, "long.jsonl", epochCount=50, batchSize=1)
    svc.wait_job(job["name"], key, until={"JOB_STATE_RUNNING"})

    result = invoke("jobs", "cancel", job["name"], *server)
    assert result.exit_code == 0, result.output
    assert re.search(r"JOB_STATE_CANCELL(ING|ED)", result.output)
    watch = invoke("jobs", "watch", job["name"], *server)
    assert watch.exit_code == 1
    assert "CANCELLED" in watch.output and "cancel" in watch.output.splitlines()[-1]
    assert svc.wait_job(job["name"], key)["state"] == "JOB_STATE_CANCELLED"


def test_jobs_without_a_server_read_this_machines_store():
    spec = TuningSpec(train="/nowhere/train.jsonl", base_model="tiny", labels={"cli": "embedded"})
    store = Store()
    job, _ = store.create_job(TENANT, spec, spec.to_request())  # no worker: it stays PENDING
    store.close()

    listed = json.loads(invoke("jobs", "list", "--json", "--label", "cli=embedded").output)
    assert [j["name"] for j in listed] == [f"tuningJobs/{job.id}"] and listed[0]["state"] == "JOB_STATE_PENDING"
    assert "JOB_STATE_PENDING" in invoke("jobs", "get", job.id).output
    cancelled = invoke("jobs", "cancel", job.id)
    assert cancelled.exit_code == 0 and "JOB_STATE_CANCELLED" in cancelled.output  # never started: at once
    started = time.monotonic()
    watch = invoke("jobs", "watch", job.id)
    assert watch.exit_code == 1 and "cancelled before it started" in watch.output
    assert time.monotonic() - started < 30

    files = invoke("files", "list")
    assert files.exit_code == 1 and "--endpoint" in files.output
    assert invoke("jobs", "list", "--state", "bogus").exit_code == 1
