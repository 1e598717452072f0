"""Big uploads on a real server (sizes scaled down: ``TUNERY_UPLOAD_OWN_CHECKER_BYTES`` is 64 KiB here): each is
checked in a checker process of its own, which is killed when its client goes away or its time is up (a 504 that
says how to proceed), and another tenant's small upload does not wait for it.

    .venv/bin/python -m pytest tests/service/test_upload_checks.py -x -q
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tunery.api.checks import BigChecks
from tunery.errors import ResourceExhaustedError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def big_file(size: int) -> bytes:
    """A valid JSONL dataset of at least ``size`` bytes (the fixture's lines repeated)."""
    lines = (DATA_DIR / "classify_gemini.jsonl").read_bytes()
    return lines * (size // len(lines) + 1)


def checkers(svc) -> list[int]:
    return [p.pid for p in psutil.Process(svc.process.pid).children() if "tunery.serving.host" in " ".join(p.cmdline())]


@pytest.fixture
def uploads(service):
    def start(**env: str):
        svc = service(start=False)
        svc.env.update(TUNERY_UPLOAD_OWN_CHECKER_BYTES=str(64 * 1024), TUNERY_UPLOAD_MODEL=str(svc.data_root / "tiny"))
        svc.env.update(env)
        return svc.start()

    return start


def test_a_big_upload_is_checked_on_its_own_and_leaves_no_process(uploads):
    svc = uploads()
    data = big_file(256 * 1024)
    response = svc.client.post("/v1/files", files={"file": ("big.jsonl", data)}, timeout=120)
    assert response.status_code == 201, response.text
    assert int(response.json()["sizeBytes"]) == len(data) and checkers(svc) == []  # its checker is gone with it


def test_a_check_past_its_time_is_stopped_with_a_504_that_says_how_to_proceed(uploads):
    svc = uploads(TUNERY_UPLOAD_CHECK_SECONDS="0.5")  # less than its checker takes to start
    response = svc.client.post("/v1/files", files={"file": ("big.jsonl", big_file(256 * 1024))}, timeout=120)
    assert response.status_code == 504, response.text
    message = response.json()["error"]["message"]
    assert "did not finish within 0.5 s" in message and "split the file" in message, message
    assert checkers(svc) == [] and svc.client.get("/v1/files").json().get("files", []) == []


def test_a_check_whose_client_left_is_stopped_and_other_tenants_are_not_held_up(uploads):
    svc = uploads()
    data = big_file(4 * 2**20)  # a few seconds to check with the tiny tokenizer

    def abandon() -> None:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{svc.url}/v1/files", files={"file": ("big.jsonl", data)}, timeout=httpx.Timeout(60, read=2))

    client = threading.Thread(target=abandon)
    client.start()
    deadline = time.monotonic() + 30
    while not checkers(svc):
        assert time.monotonic() < deadline, "the big upload's checker never started"
        time.sleep(0.05)
    own = checkers(svc)
    small = svc.client.post("/v1/files", files={"file": ("s.jsonl", big_file(1000))}, timeout=60)
    assert small.status_code == 201, small.text  # on the shared checker, not behind the big check
    client.join(30)
    deadline = time.monotonic() + 3  # the client gave up 2 s in; the server polls every 0.5 s
    while [pid for pid in own if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, "the abandoned check's process still runs"
        time.sleep(0.05)


def test_each_tenant_has_one_big_check_at_a_time():
    checks = BigChecks()
    checks.enter("alice")
    with pytest.raises(ResourceExhaustedError, match="another big upload of this tenant"):
        checks.enter("alice")
    checks.enter("bob")
    with pytest.raises(ResourceExhaustedError, match="other tenants"):
        checks.enter("carol")
    checks.leave("alice")
    checks.enter("alice")


def test_a_check_at_its_time_bound_keeps_what_it_checked_and_the_job_checks_the_rest(uploads):
    """The check reads for 0.8 of TUNERY_UPLOAD_CHECK_SECONDS; a file it could not finish is kept, marked partly
    checked, and a bad line past that point fails the tuning job that reads it, named by number."""
    svc = uploads(TUNERY_UPLOAD_CHECK_SECONDS="12")  # 9.6 s: the checker's start (3-8 s), then lines
    bad = b'{"contents": [{"role": "user", "parts": [{"text": "no answer"}]}]}\n'
    data = big_file(11 * 2**20 // 2) + bad  # 26,000 lines: 2x what the check reads in 9.6 s (~2,000 a second)
    total = data.count(b"\n")
    response = svc.client.post("/v1/files", files={"file": ("big.jsonl", data)}, timeout=120)
    assert response.status_code == 201, response.text
    record = response.json()
    partial = record["partialCheck"]
    assert 0 <= partial["checkedLines"] < total and 0 <= partial["checkedBytes"] < len(data), partial
    assert record["exampleCount"] == partial["checkedLines"] and record["supervisedTuningDataStats"] == {}
    assert "checked when a tuning job reads the file" in record["status_details"] and checkers(svc) == []
    listed = svc.client.get("/v1/files").json()["files"]
    assert [f["name"] for f in listed] == [record["name"]] and listed[0]["partialCheck"] == partial
    body = {"baseModel": "tiny", "supervisedTuningSpec": {"trainingDatasetUri": record["name"]}}
    job = svc.client.post("/v1/tuningJobs", json=body)
    assert job.status_code == 201, job.text
    failed = svc.wait_job(job.json()["name"])
    assert failed["state"] == "JOB_STATE_FAILED", failed
    assert f":{total}: contents: no model turn" in failed["error"]["message"], failed
