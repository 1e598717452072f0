"""The control plane never waits on the data plane, on a real server: deleting a model ends the generations
running on it (each ends with a 404 event) and answers within 2 s; revoking a key ends its open streams with a
401 event within about a second. (A cancel between micro-batches: tests/unit/test_tuning.py.)

Answers are held to a long JSON array (the constraint allows no end before the token budget), so a generation on
the tiny model runs long enough to be interrupted.

    .venv/bin/python -m pytest tests/service/test_control_plane.py -x -q
"""

from __future__ import annotations

import json
import shutil
import threading
import time

from tunery.jobs.store import TunedModel, new_id, now

BOUND = 2.0
LONG = {
    "contents": [{"role": "user", "parts": [{"text": "count"}]}],
    "generationConfig": {
        "maxOutputTokens": 440,
        "responseMimeType": "application/json",
        "responseSchema": {"type": "ARRAY", "items": {"type": "INTEGER"}, "minItems": 400},
    },
}


def add_model(svc, tuned_lora, tenant: str) -> TunedModel:
    model_id = new_id()
    path = svc.home / "tuned-models" / model_id
    shutil.copytree(tuned_lora, path)
    record = TunedModel(model_id, tenant, new_id(), "m", "tiny", "PEFT_ADAPTER", str(path), now())
    return svc.store.add_tuned_model(record)


def open_streams(svc, model_id: str, headers: dict[str, str], count: int) -> tuple[list[list[dict]], list]:
    """``count`` SSE streams read on threads; each one's events (the list grows as they come)."""
    events: list[list[dict]] = [[] for _ in range(count)]

    def read(into: list[dict]) -> None:
        url = f"/v1/models/{model_id}:streamGenerateContent"
        with svc.client.stream("POST", url, params={"alt": "sse"}, json=LONG, headers=headers, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    into.append(json.loads(line[6:]))

    threads = [threading.Thread(target=read, args=(e,), daemon=True) for e in events]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while not all(events):
        assert time.monotonic() < deadline, "the streams did not start"
        time.sleep(0.02)
    return events, threads


def ended_with(events: list[dict]) -> int | None:
    """The error code a stream ended with (None: it finished its answer)."""
    return events[-1]["error"]["code"] if "error" in events[-1] else None


def test_deleting_a_model_ends_its_generations_and_answers_within_2_s(service, tuned_lora):
    svc = service()
    model = add_model(svc, tuned_lora, "default")
    events, threads = open_streams(svc, model.id, {}, 3)
    started = time.monotonic()
    assert svc.client.delete(f"/v1/models/{model.id}").status_code == 200
    took = time.monotonic() - started
    for thread in threads:
        thread.join(BOUND)
    ended = time.monotonic() - started
    assert took < BOUND and ended < BOUND + 0.5, (took, ended)
    codes = [ended_with(e) for e in events]
    assert 404 in codes and set(codes) <= {404, None}, codes  # None: one finished before the delete reached it
    assert all("was deleted" in e[-1]["error"]["message"] for e in events if ended_with(e) == 404)
    assert svc.client.post(f"/v1/models/{model.id}:generateContent", json=LONG).status_code == 404


def test_a_revoked_keys_open_streams_end_with_a_401_event(service, tuned_lora):
    svc = service()
    key = svc.create_key("alice")
    model = add_model(svc, tuned_lora, "alice")
    time.sleep(1.1)  # the server asks whether keys exist at most once a second
    events, threads = open_streams(svc, model.id, svc.headers(key), 2)
    started = time.monotonic()
    svc.store.delete_keys("alice")
    for thread in threads:
        thread.join(BOUND + 1)
    assert time.monotonic() - started < BOUND + 1
    codes = [ended_with(e) for e in events]
    assert 401 in codes and set(codes) <= {401, None}, codes
    assert svc.client.get("/v1/models", headers=svc.headers(key)).status_code == 401
