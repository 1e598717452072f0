"""The openai client, unmodified: a DPO fine-tuning job (``method={"type": "dpo", ...}``) on uploaded preference
pairs, then a job whose ``model`` is that fine-tuned model; both succeed, and the second's ``tunery.json`` names the
chain. Bad preference lines are refused at upload with their line numbers.

    .venv/bin/python -m pytest tests/clients/test_openai_dpo.py -x -q
"""

from __future__ import annotations

import json

import pytest
from client_helpers import wait_for

openai = pytest.importorskip("openai", reason="openai is not installed (bash scripts/install.sh test)")

ANSWERS = [("red", "one"), ("green", "four"), ("blue", "eight"), ("yes", "no")]


def pairs(n: int) -> bytes:
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"card arrival #{i}"}]},
            "preferred_output": [{"role": "assistant", "content": ANSWERS[i % 4][0]}],
            "non_preferred_output": [{"role": "assistant", "content": ANSWERS[i % 4][1]}],
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def client(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def ended(client, job_id: str):
    found = []

    def check() -> bool:
        found[:] = [client.fine_tuning.jobs.retrieve(job_id)]
        return found[0].status in ("succeeded", "failed", "cancelled")

    wait_for(check, f"fine-tuning job {job_id} ends")
    return found[0]


def test_dpo_job_then_a_job_from_its_model(server, key, client) -> None:
    uploaded = client.files.create(file=("pairs.jsonl", pairs(16)), purpose="fine-tune")
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": "auto"}}}
    first = ended(client, client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, method=method).id)
    assert first.status == "succeeded", first
    assert first.method.type == "dpo" and first.method.dpo.hyperparameters.beta == 0.2
    events = list(client.fine_tuning.jobs.list_events(first.id, limit=100))
    assert any("rewards/accuracies" in (e.data or {}) for e in events if e.type == "metrics")

    second = client.fine_tuning.jobs.create(
        model=f"ft:tiny:clients:dpo:{first.fine_tuned_model}", training_file=uploaded.id, method=method
    )
    second = ended(client, second.id)
    assert second.status == "succeeded", second
    [manifest] = [json.loads(p.read_text()) for p in server.home.rglob(f"{second.fine_tuned_model}/tunery.json")]
    assert manifest["objective"] == "DPO" and manifest["tunedFrom"][0]["id"] == first.fine_tuned_model
    assert manifest["tunedFrom"][0]["objective"] == "DPO" and manifest["tunedFrom"][0]["sha256"]

    # The Vertex shape: preferenceOptimizationSpec, from the same tuned model named as Vertex names it.
    vertex = {
        "baseModel": f"projects/p/locations/us/models/{first.fine_tuned_model}",
        "preferenceOptimizationSpec": {
            "trainingDatasetUri": uploaded.id,
            "hyperParameters": {
                "beta": 0.3,
                "epochCount": "1",
                "learningRateMultiplier": 2,
                "adapterSize": "ADAPTER_SIZE_EIGHT",
            },
        },
    }
    headers = server.headers(key)
    created = server.client.post("/v1/projects/p/locations/us/tuningJobs", json=vertex, headers=headers)
    assert created.status_code == 200, created.text
    assert created.json()["preferenceOptimizationSpec"]["hyperParameters"]["beta"] == 0.3
    job = server.wait_job("tuningJobs/" + created.json()["name"].rsplit("/", 1)[1], key)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    resource = json.loads(
        next(server.home.rglob(f"{job['tunedModel']['model'].rsplit('/', 1)[1]}/tunery.json")).read_text()
    )
    assert resource["tunedFrom"][0]["id"] == first.fine_tuned_model and resource["hyperParameters"]["beta"] == 0.3


def test_bad_preference_lines_are_refused_by_line(client) -> None:
    good = pairs(1).decode()
    bad = json.loads(good)
    bad["non_preferred_output"] = bad["preferred_output"]
    body = (good + json.dumps(bad) + "\n" + json.dumps({**bad, "input": {}}) + "\n").encode()
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", body), purpose="fine-tune")
    message = str(caught.value)
    assert "line 2: non_preferred_output[0].content" in message and "line 3: input.messages" in message
