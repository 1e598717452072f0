"""The service on PostgreSQL (``TUNERY_DATABASE_URL``): a real server and its workers share a throwaway
cluster; a job succeeds, a SIGKILLed server's job finishes after a restart, and the cluster stopped and
started again mid-job leaves no job stuck and loses none.

    .venv/bin/python -m pytest tests/service/test_postgres.py -x -q
"""

from __future__ import annotations

import signal
import time

from tunery.jobs.store import ENDED

LONG_JOB = {
    "baseModel": "tiny",
    "supervisedTuningSpec": {
        "trainingDatasetUri": "long.jsonl",
        "autoValidation": False,  # every example trains: the steps counted below
        "hyperParameters": {"epochCount": 2, "batchSize": 8},
    },
}


def test_jobs_run_and_survive_a_server_kill_on_postgresql(service, postgres_url):
    svc = service(database_url=postgres_url)
    assert svc.store.engine.dialect.name == "postgresql"
    job = svc.client.post("/v1/tuningJobs", json=LONG_JOB, headers={"Idempotency-Key": "pg-1"}).json()
    again = svc.client.post("/v1/tuningJobs", json=LONG_JOB, headers={"Idempotency-Key": "pg-1"})
    assert again.status_code == 200 and again.json()["name"] == job["name"]
    deadline = time.monotonic() + 120
    while len([e for e in svc.events(job["name"]) if e["type"] == "metrics"]) < 10:
        assert time.monotonic() < deadline, "".join(svc.output)
        time.sleep(0.1)
    svc.stop(signal.SIGKILL)
    svc.start()
    done = svc.wait_job(job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    steps = [e["data"]["step"] for e in svc.events(job["name"]) if e["type"] == "metrics"]
    assert steps == list(range(1, 101))  # the worker checkpointed on its way out: no step trained twice
    assert [j["name"] for j in svc.client.get("/v1/tuningJobs").json()["tuningJobs"]] == [job["name"]]
    model = done["tunedModel"]["model"]
    answer = svc.client.post(
        f"/v1/{model}:generateContent", json={"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    )
    assert answer.status_code == 200, answer.text


SMALL_JOB = {
    "baseModel": "tiny",
    "supervisedTuningSpec": {
        "trainingDatasetUri": "classify_gemini.jsonl",
        "hyperParameters": {"epochCount": 2, "batchSize": 4},  # 3 steps an epoch
    },
}


def test_postgresql_going_away_mid_job_and_coming_back_loses_no_job_and_leaves_none_stuck(
    service, postgres_url, postgres_control
):
    """The cluster is stopped (fast shutdown: every connection dropped) while a job trains and another waits, and
    started again 3 s later: the API answers 503 meanwhile, the worker retries its writes, the scheduler backs off,
    and both jobs succeed with every step recorded once."""
    stop_postgres, start_postgres = postgres_control
    svc = service(database_url=postgres_url, start=False)
    svc.env["TUNERY_FAULT_PAUSE_AT"] = "step 2"
    svc.start()
    running = svc.client.post("/v1/tuningJobs", json=SMALL_JOB).raise_for_status().json()
    queued = svc.client.post("/v1/tuningJobs", json=SMALL_JOB).raise_for_status().json()
    marker = svc.home / "jobs" / running["name"].split("/")[1] / "paused"
    wait_for_file(marker, svc)
    stop_postgres()
    try:
        marker.unlink()  # the worker trains on and cannot record its steps
        time.sleep(1)
        away = svc.client.get(f"/v1/{running['name']}")
        assert away.status_code == 503 and away.json()["error"]["status"] == "UNAVAILABLE", away.text
        time.sleep(2)
    finally:
        start_postgres()
    for job in (running, queued):
        if job is queued:  # held at step 2 as well (TUNERY_FAULT_PAUSE_AT is the server's): let it go
            release(svc.home / "jobs" / job["name"].split("/")[1] / "paused", svc)
        done = ended(svc, job["name"])
        assert done["state"] == "JOB_STATE_SUCCEEDED", done
        steps = [e["data"]["step"] for e in svc.events(job["name"]) if e["type"] == "metrics"]
        assert steps == list(range(1, 7)), steps
    listed = svc.client.get("/v1/tuningJobs").json()["tuningJobs"]
    assert sorted(j["name"] for j in listed) == sorted([running["name"], queued["name"]])
    scheduler = [line for line in svc.output if line.startswith("tunery scheduler:")]
    assert any("the job store answers again" in line for line in scheduler), scheduler
    assert len(scheduler) <= 8, scheduler  # backing off, not a line every 0.5 s


def ended(svc, name: str, timeout: float = 120) -> dict:
    """The job once it has ended; 503s (the cluster still starting) are waited out."""
    deadline = time.monotonic() + timeout
    while True:
        response = svc.client.get(f"/v1/{name}")
        if response.status_code != 503 and response.raise_for_status().json()["state"] in ENDED:
            return response.json()
        assert time.monotonic() < deadline, f"{name}: {response.text}\n{''.join(svc.output)}"
        time.sleep(0.2)


def wait_for_file(path, svc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, "".join(svc.output)
        time.sleep(0.05)


def release(marker, svc) -> None:
    """Let a worker held by ``TUNERY_FAULT_PAUSE_AT`` go on."""
    wait_for_file(marker, svc)
    marker.unlink()
