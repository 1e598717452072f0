"""Batch prediction over REST (Vertex batchPredictionJobs, OpenAI /v1/batches) on a real server.

.venv/bin/python -m pytest tests/service/test_batches.py -q
"""

from __future__ import annotations

import json
import time


def _vertex_lines(n: int, tokens: int) -> list[str]:
    return [
        json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": f"hello world #{i}"}]}],
                                "generationConfig": {"maxOutputTokens": tokens}}})
        for i in range(n)
    ]  # fmt: skip


def test_rest_batch_prediction_jobs(service):
    """Vertex's batchPredictionJobs and OpenAI's /v1/batches on a real server: created, run by the scheduler's
    worker, read back; a bad line fails alone."""
    api = service()
    lines = _vertex_lines(5, tokens=6) + ["{broken"]
    (api.data_root / "requests.jsonl").write_text("\n".join(lines) + "\n")
    created = api.client.post("/v1/batchPredictionJobs", json={
        "displayName": "tickets", "model": "tiny",
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["requests.jsonl"]}}})  # fmt: skip
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    deadline = time.monotonic() + 120
    while (job := api.client.get(f"/v1/{name}").json())["state"] not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert job["completionStats"] == {"successfulCount": "5", "failedCount": "1", "incompleteCount": "0"}
    records = [json.loads(x) for x in api.client.get(f"/v1/{name}/predictions").text.splitlines()]
    assert len(records) == 6 and "status" in records[5] and all("response" in r for r in records[:5])
    listed = api.client.get("/v1/batchPredictionJobs").json()["batchPredictionJobs"]
    assert [j["name"] for j in listed] == [name]
    assert api.client.get("/v1/tuningJobs").json().get("tuningJobs", []) == []  # not a tuning job
    bad = api.client.post("/v1/batchPredictionJobs", json={"inputConfig": {}})
    assert bad.status_code == 400 and "inputConfig.gcsSource.uris" in bad.text and "model" in bad.text

    chat = [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}})
            for i in range(3)]  # fmt: skip
    (api.data_root / "chat.jsonl").write_text("\n".join(chat) + "\n")
    made = api.client.post("/v1/batches", json={"input_file_id": "chat.jsonl", "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h"})  # fmt: skip
    assert made.status_code == 200, made.text
    batch_id = made.json()["id"]
    while (found := api.client.get(f"/v1/batches/{batch_id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline + 60, found
        time.sleep(0.5)
    assert found["status"] == "completed" and found["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    output = [json.loads(x) for x in api.client.get(f"/v1/batches/{batch_id}/output").text.splitlines()]
    assert [o["custom_id"] for o in output] == ["c0", "c1", "c2"]
    assert output[0]["response"]["body"]["object"] == "chat.completion"


def test_rest_export_job_writes_a_downloadable_gguf_with_progress_events(service):
    """POST /v1/models/{id}:export on a real server: run by the scheduler's worker, progress in its events, the
    GGUF and Modelfile downloadable; a bad quant is a 400 naming the field; export jobs are not tuning jobs."""
    api = service()
    bad = api.client.post("/v1/models/tiny:export", json={"quant": "q3"})
    assert bad.status_code == 400 and "quant" in bad.text
    created = api.client.post("/v1/models/tiny:export", json={"quant": "q8_0", "ollama": True})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    deadline = time.monotonic() + 120
    while (job := api.client.get(f"/v1/{name}").json())["state"] not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert job["progress"]["fraction"] == 1.0
    files = {f["name"]: f for f in job["files"]}
    assert sorted(files) == ["Modelfile", "tiny-q8_0.gguf"]
    gguf = api.client.get(f"/v1/{name}/files/tiny-q8_0.gguf")
    assert gguf.status_code == 200 and gguf.content[:4] == b"GGUF"
    assert len(gguf.content) == int(files["tiny-q8_0.gguf"]["sizeBytes"])
    assert "FROM ./tiny-q8_0.gguf" in api.client.get(f"/v1/{name}/files/Modelfile").text
    assert api.client.get(f"/v1/{name}/files/..%2Ftunery.db").status_code == 404
    events = api.client.get(f"/v1/{name}/events").json()["events"]
    assert any(e["type"] == "metrics" and "fraction" in (e.get("data") or {}) for e in events)
    assert api.client.get("/v1/tuningJobs").json().get("tuningJobs", []) == []
