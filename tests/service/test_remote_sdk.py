"""The SDK in remote mode against a real ``tunery serve``: what a user's script does after ``tunery.init``.

.venv/bin/python -m pytest tests/service/test_remote_sdk.py -x -q
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

import tunery
from tunery import GenerativeModel, TuningJob, sft
from tunery.errors import (
    APIConnectionError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    DatasetError,
    NotFoundError,
)
from tunery.sdk import client as remote

SUCCEEDED, CANCELLED = "JOB_STATE_SUCCEEDED", "JOB_STATE_CANCELLED"


def until(condition, timeout: float = 120, what: str = "condition"):
    """Poll ``condition()`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} not met after {timeout} s"
        time.sleep(0.1)
    return value


def test_train_uploads_tunes_and_the_tuned_model_answers_over_http(service):
    svc = service()
    key = svc.create_key("acme")
    tunery.init(api_endpoint=svc.url, api_key=key)
    assert remote.current() is not None and remote.current().endpoint == svc.url.rstrip("/")

    job = sft.train(
        source_model=str(svc.data_root / "tiny"),
        train_dataset=svc.data_root / "classify_gemini.jsonl",  # a local file: uploaded first
        validation_dataset=svc.data_root / "classify_openai.jsonl",
        epochs=2,
        adapter_size=4,
        batch_size=4,
        tuned_model_display_name="router",
        labels={"team": "support"},
    )
    assert job.name.startswith("tuningJobs/") and not job.has_ended
    uploads = {f["displayName"]: f for f in remote.current().list_files()}
    assert set(uploads) == {"classify_gemini.jsonl", "classify_openai.jsonl"}
    tuning = job.to_dict()["supervisedTuningSpec"]
    assert tuning["trainingDatasetUri"] == uploads["classify_gemini.jsonl"]["name"]
    assert tuning["hyperParameters"]["epochCount"] == 2 and tuning["hyperParameters"]["adapterSize"] == 4

    events = list(job.watch())  # the live stream, to the end
    assert job.state == SUCCEEDED, job.to_dict()
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"]]
    assert steps == list(range(1, 7))  # 10 examples, batch 4: 3 steps an epoch, in order, none repeated
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert events[-1]["type"] == "state" and events[-1]["data"]["state"] == SUCCEEDED
    assert [e["id"] for e in job.events()] == [e["id"] for e in events]

    assert job.wait(timeout=5).state == SUCCEEDED
    inputs = svc.home / "job-inputs" / job.id  # the job's links to its uploads: removed once it ended
    until(lambda: not inputs.exists(), timeout=10, what="the job's inputs removed")
    assert all((svc.home / "files" / f"{f['name'].split('/')[1]}.jsonl").is_file() for f in uploads.values())
    assert job.tuned_model_name == f"models/{job.id}"
    assert job.tuned_model_endpoint_name == f"{svc.url.rstrip('/')}/v1/models/{job.id}:generateContent"
    stats = job.to_dict()["tuningDataStats"]["supervisedTuningDataStats"]
    assert stats["tuningDatasetExampleCount"] == 10
    assert TuningJob.get(job.name).state == SUCCEEDED
    assert job.name in [j.name for j in TuningJob.list()]
    assert [j.name for j in TuningJob.list(labels={"team": "support"})] == [job.name]
    assert TuningJob.list(labels={"team": "sales"}) == []
    assert job.name in [j.name for j in TuningJob.list(state=SUCCEEDED)]

    for name in (job.tuned_model_name, job.id, job.tuned_model_endpoint_name):
        model = GenerativeModel(name, system_instruction="Route the ticket.")
        response = model.generate_content("my card never arrived", generation_config={"maxOutputTokens": 4})
        assert response.usage_metadata.prompt_token_count == model.count_tokens("my card never arrived")
        assert 1 <= response.usage_metadata.candidates_token_count <= 4
        assert response.finish_reason in {"STOP", "MAX_TOKENS"} and response.latency_ms > 0

    # Controlled output travels over the API as it works embedded: the schema reaches the server (the SDK's
    # _config_json: a dropped responseSchema fails here, the tuned model's own label set answering) and holds.
    model = GenerativeModel(job.tuned_model_name)
    fields = {"team": {"type": "STRING", "enum": ["billing", "tech"]}, "urgent": {"type": "BOOLEAN"}}
    schema = {"type": "OBJECT", "properties": fields, "required": ["team", "urgent"]}
    config = {"responseMimeType": "application/json", "responseSchema": schema, "maxOutputTokens": 40}
    answer = json.loads(model.generate_content("my card never arrived", generation_config=config).text)
    assert set(answer) == {"team", "urgent"} and answer["team"] in {"billing", "tech"}
    assert isinstance(answer["urgent"], bool)
    json_schema = {"type": "string", "enum": ["refund please", "wrong size"]}
    config = {"responseMimeType": "application/json", "responseJsonSchema": json_schema, "maxOutputTokens": 12}
    assert json.loads(model.generate_content("refund", generation_config=config).text) in json_schema["enum"]


def test_remote_mode_never_loads_a_model_in_this_process(service, monkeypatch):
    svc = service()
    tunery.init(api_endpoint=svc.url)
    import tunery.serving.engine as engine

    def no_engine(*args, **kwargs):
        raise AssertionError("remote mode loaded a model in the SDK's process")

    monkeypatch.setattr(engine, "Engine", no_engine)
    model = GenerativeModel("models/nope")
    with pytest.raises(NotFoundError, match="models/nope"):
        model.generate_content("hello")
    with pytest.raises(tunery.ModelError, match="local path"):
        GenerativeModel(svc.data_root / "tiny")
    with pytest.raises(DatasetError) as caught:  # the server's 400 for a bad request, every field named
        remote.current().generate_content("nope", {"contents": [{"role": "model", "parts": [{"text": ""}]}]})
    assert caught.value.problems and all(p.field.startswith("contents[0]") for p in caught.value.problems)


def test_cancel_a_long_job_ends_it_cancelled(service):
    svc = service()
    tunery.init(api_endpoint=svc.url)
    job = sft.train(source_model="tiny", train_dataset="long.jsonl", epochs=50, batch_size=1)  # server-side paths
    assert job.to_dict()["supervisedTuningSpec"]["trainingDatasetUri"] == "long.jsonl"
    until(lambda: any(e["type"] == "metrics" for e in job.events()), what="a first training step")
    job.cancel()
    assert job.state in {"JOB_STATE_CANCELLING", CANCELLED}
    assert job.wait(timeout=120, poll=0.2).state == CANCELLED
    assert job.has_ended and not job.has_succeeded and job.tuned_model_name is None
    assert TuningJob.get(job.id).state == CANCELLED


class DropFirstAnswer(httpx.BaseTransport):
    """Sends each request to the server, but loses the answer to the first job create (a connection reset)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.creates = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/tuningJobs":
            self.creates += 1
            if self.creates == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_create_retried_after_a_lost_answer_makes_one_job(service):
    svc = service()
    transport = DropFirstAnswer()
    hyper = {"epochCount": 1}
    body = {"baseModel": "tiny", "supervisedTuningSpec": {"trainingDatasetUri": "classify_gemini.jsonl"}}
    body["supervisedTuningSpec"]["hyperParameters"] = hyper
    with remote.Client(svc.url, transport=transport) as client:
        job = client.create_job(body, idempotency_key="retry-1")
        assert transport.creates == 2  # the first answer was lost; the retry got the job the first one made
        assert [j["name"] for j in client.list_jobs()] == [job["name"]]
        assert client.create_job(body, idempotency_key="retry-1")["name"] == job["name"]
        hyper["epochCount"] = 2
        with pytest.raises(ConflictError, match="Idempotency-Key"):
            client.create_job(body, idempotency_key="retry-1")
        assert [j["name"] for j in client.list_jobs()] == [job["name"]]
    assert svc.wait_job(job["name"])["state"] == SUCCEEDED


class CutStream(httpx.SyncByteStream):
    """An event stream that breaks in the middle of an event, after ``events`` whole ones."""

    def __init__(self, inner: httpx.SyncByteStream, events: int) -> None:
        self.inner, self.events = inner, events

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self.inner:
            ends = [i for i in range(len(chunk)) if chunk.startswith(b"\n\n", i)]
            if seen + len(ends) >= self.events:
                cut = ends[self.events - seen - 1] + 2
                yield chunk[:cut] + b'id: 999\ndata: {"type": "sta'
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            seen += len(ends)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class DropFirstStream(httpx.BaseTransport):
    """Cuts the first event stream after three events; records each stream request's ``Last-Event-ID``."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.resumed_from: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.params.get("alt") != "sse":
            return response
        self.resumed_from.append(request.headers.get("Last-Event-ID"))
        if len(self.resumed_from) > 1:
            return response
        stream = CutStream(response.stream, 3)  # type: ignore[arg-type]
        return httpx.Response(response.status_code, headers=response.headers, stream=stream, request=request)

    def close(self) -> None:
        self.inner.close()


def test_a_dropped_event_stream_resumes_where_it_broke(service):
    svc = service()
    transport = DropFirstStream()
    body = {
        "baseModel": "tiny",
        "supervisedTuningSpec": {
            "trainingDatasetUri": "classify_gemini.jsonl",
            "hyperParameters": {"epochCount": 2, "batchSize": 4},
        },
    }
    with remote.Client(svc.url, transport=transport) as client:
        job = client.create_job(body)
        streamed = list(client.stream_events(job["name"]))
        stored = client.events(job["name"])
    ids = [e["id"] for e in streamed]
    assert ids == [e["id"] for e in stored]  # every event once, in order: none lost at the cut, none repeated
    assert len(transport.resumed_from) >= 2
    assert transport.resumed_from[:2] == [None, str(ids[2])]  # resumed after the last whole event
    assert streamed[-1]["data"]["state"] == SUCCEEDED


def test_errors_are_tunery_errors_that_name_the_problem(service):
    svc = service()
    key = svc.create_key("acme")

    tunery.init(api_endpoint=svc.url, api_key="tk_0000_wrong")
    with pytest.raises(AuthenticationError, match=svc.url.rstrip("/")):
        TuningJob.list()
    tunery.init(api_endpoint=svc.url)  # keys exist: a key is required
    with pytest.raises(AuthenticationError):
        sft.train(source_model="tiny", train_dataset="classify_gemini.jsonl")

    tunery.init(api_endpoint=svc.url, api_key=key)
    bad = svc.data_root / "bad" / "mixed.jsonl"
    with pytest.raises(DatasetError) as caught:
        sft.train(source_model="tiny", train_dataset=bad)
    problems = caught.value.problems
    assert len(problems) >= 5 and all(p.file == str(bad) and p.line > 0 and p.field for p in problems)
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    assert f"{bad}:{problems[0].line}: {problems[0].field}: " in str(caught.value)
    assert TuningJob.list() == []  # no job was made from a bad file

    with pytest.raises(ConfigError, match="adapterSize 3"):
        sft.train(source_model="tiny", train_dataset="classify_gemini.jsonl", adapter_size=3)
    with pytest.raises(ConfigError, match="no-such-model"):
        sft.train(source_model="no-such-model", train_dataset="classify_gemini.jsonl")
    with pytest.raises(NotFoundError):
        TuningJob.get("tuningJobs/20000101000000000000000000")

    port = svc.url.rstrip("/").rsplit(":", 1)[1]
    svc.kill()
    tunery.init(api_endpoint=f"http://127.0.0.1:{port}", api_key=key)
    remote.current().retries = 1
    with pytest.raises(APIConnectionError, match=f"127.0.0.1:{port}"):
        TuningJob.list()


def test_init_and_the_environment_choose_the_mode(monkeypatch):
    assert remote.current() is None  # embedded by default
    monkeypatch.setenv(remote.ENDPOINT_ENV, "http://127.0.0.1:9/v1/")
    monkeypatch.setenv(remote.KEY_ENV, "tk_a_b")
    client = remote.current()
    assert client is not None and client.endpoint == "http://127.0.0.1:9"
    assert client.http.headers["Authorization"] == "Bearer tk_a_b"
    tunery.init(api_endpoint="http://other:8000")
    assert remote.current().endpoint == "http://other:8000"
    monkeypatch.delenv(remote.ENDPOINT_ENV)
    tunery.init()
    assert remote.current() is None  # init with no endpoint anywhere: embedded
    with pytest.raises(ConfigError, match="api_endpoint"):
        tunery.init(api_endpoint="localhost:8000")
    assert remote.model_id("models/abc") == remote.model_id("abc") == "abc"
    assert remote.model_id("http://h:1/v1/models/abc:generateContent") == "abc"


def test_parse_sse_reads_blocks_ids_and_skips_keepalives():
    lines = [
        ": keep-alive",
        "",
        "id: 3",
        'data: {"type": "state"}',
        "",
        "id: 4",
        'data: {"id": 4,',
        'data: "type": "m"}',
        "",
    ]
    assert list(remote.parse_sse(lines)) == [{"type": "state", "id": 3}, {"id": 4, "type": "m"}]
    assert list(remote.parse_sse(["id: 5", 'data: {"type": "cut"}'])) == []  # a block the stream cut short
