"""Faults against a real server: a worker SIGKILLed mid-epoch, the server SIGKILLed or SIGTERMed mid-job.

In each case the job must end SUCCEEDED without starting over. A killed worker loses the steps since
its last checkpoint (the end of epoch 1: step 50 of 150). A worker whose server stops checkpoints
where it is on its way out (SIGTERM from the server, or its parent gone), so no step is trained twice.

    .venv/bin/python -m pytest tests/service/test_faults.py -x -q
"""

from __future__ import annotations

import os
import signal
import time

import pytest

STEPS_PER_EPOCH = 50  # long.jsonl: 400 examples, batch size 8


def create(svc, epochs: int = 3, **extra) -> dict:
    body = {
        "baseModel": "tiny",
        "supervisedTuningSpec": {
            "trainingDatasetUri": "long.jsonl",
            "hyperParameters": {"epochCount": epochs, "batchSize": 8},
        },
        **extra,
    }
    response = svc.client.post("/v1/tuningJobs", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def metric_steps(svc, name: str) -> list[int]:
    return [e["data"]["step"] for e in svc.events(name) if e["type"] == "metrics"]


def wait_for_step(svc, name: str, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (steps := metric_steps(svc, name)) or steps[-1] < step:
        assert time.monotonic() < deadline, f"{name} did not reach step {step}:\n{''.join(svc.output)}"
        time.sleep(0.05)


def assert_continued_from_the_checkpoint(steps: list[int], total: int) -> None:
    """Steps rise to the fault, restart once at the checkpoint (not at 1), and reach the end."""
    restarts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(restarts) == 1, str(steps)
    assert steps[restarts[0]] == STEPS_PER_EPOCH + 1, str(steps)
    assert steps[restarts[0] :] == list(range(STEPS_PER_EPOCH + 1, total + 1))


def test_a_worker_killed_mid_epoch_is_retried_from_its_checkpoint_and_succeeds(service):
    svc = service()
    job = create(svc)
    wait_for_step(svc, job["name"], STEPS_PER_EPOCH + 5)  # epoch 1 checkpointed, mid-epoch 2
    pid = svc.store.get_job(None, job["name"].split("/")[1]).worker_pid
    os.kill(pid, signal.SIGKILL)
    done = svc.wait_job(job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    messages = [e.get("message", "") for e in svc.events(job["name"])]
    assert any("killed by SIGKILL; retry 1 of 2" in m for m in messages), messages
    assert any("resuming from checkpoint step-000050" in m for m in messages), messages
    assert_continued_from_the_checkpoint(metric_steps(svc, job["name"]), 3 * STEPS_PER_EPOCH)
    generated = svc.client.post(
        f"/v1/{done['tunedModel']['model']}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "my card never arrived"}]}]},
    )
    assert generated.status_code == 200, generated.text


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_server_restarts_and_the_job_finishes_without_starting_over(service, stop):
    svc = service(workers=1)
    running = create(svc)
    queued = create(svc, epochs=1)  # waits for the only worker
    wait_for_step(svc, running["name"], STEPS_PER_EPOCH + 5)
    svc.stop(stop)
    if stop == signal.SIGKILL:
        job = svc.store.get_job(None, running["name"].split("/")[1])
        assert job.state == "JOB_STATE_RUNNING"  # nobody was left to say otherwise
    svc.start()
    done = svc.wait_job(running["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert metric_steps(svc, running["name"]) == list(range(1, 3 * STEPS_PER_EPOCH + 1))  # none trained twice
    messages = [e.get("message", "") for e in svc.events(running["name"])]
    assert any("interrupted (the server stopped); checkpoint step-0000" in m for m in messages), messages
    assert any("resuming from checkpoint step-0000" in m for m in messages), messages
    after = svc.wait_job(queued["name"])
    assert after["state"] == "JOB_STATE_SUCCEEDED", after
    assert metric_steps(svc, queued["name"]) == list(range(1, STEPS_PER_EPOCH + 1))
    assert after["startTime"] >= done["endTime"]  # still one at a time, oldest first
