"""The service on PostgreSQL (``TUNERY_DATABASE_URL``): a real server and its workers share a throwaway
cluster; a job succeeds, and a SIGKILLed server's job finishes after a restart.

    .venv/bin/python -m pytest tests/service/test_postgres.py -x -q
"""

from __future__ import annotations

import signal
import time

LONG_JOB = {
    "baseModel": "tiny",
    "supervisedTuningSpec": {"trainingDatasetUri": "long.jsonl", "hyperParameters": {"epochCount": 2, "batchSize": 8}},
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
