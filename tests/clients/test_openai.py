"""The openai client (``OpenAI(base_url=URL + "/v1", api_key=KEY)``), unmodified, against a real ``tunery serve``.

Upload with ``files.create(purpose="fine-tune")`` (the OpenAI chat JSONL form), fine-tune, follow the job
(retrieve, list, events, checkpoints), then chat and complete with its ``fine_tuned_model``, streamed and
not; each answer is parsed by the client's own types. The job is the native ``tuningJobs/{id}`` too.

    .venv/bin/python -m pytest tests/clients/test_openai.py -x -q
"""

from __future__ import annotations

import time

import pytest
from client_helpers import TINY_EPOCHS, TINY_RATE, wait_for

openai = pytest.importorskip("openai", reason="openai is not installed (bash scripts/install.sh test)")


@pytest.fixture(scope="module")
def client(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def uploaded(server, client):
    with (server.data_root / "classify_openai.jsonl").open("rb") as fh:
        return client.files.create(file=fh, purpose="fine-tune")


@pytest.fixture(scope="module")
def job(server, key, client, uploaded):
    """A job created by ``fine_tuning.jobs.create``, retrieved until it ends."""
    created = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": TINY_EPOCHS, "learning_rate_multiplier": TINY_RATE},
        suffix="openai tuned",
    )
    assert created.status in ("validating_files", "queued", "running")
    current = created

    def ended() -> bool:
        nonlocal current
        current = client.fine_tuning.jobs.retrieve(created.id)
        return current.status in ("succeeded", "failed", "cancelled")

    wait_for(ended, f"fine-tuning job {created.id} ends")
    assert current.status == "succeeded", current
    native = server.client.get(f"/v1/tuningJobs/{created.id}", headers=server.headers(key)).json()
    assert native["state"] == "JOB_STATE_SUCCEEDED" and native["tunedModelDisplayName"] == "openai tuned"
    return current


def test_files(client, uploaded) -> None:
    assert isinstance(uploaded, openai.types.FileObject)
    assert uploaded.purpose == "fine-tune" and uploaded.bytes > 0 and uploaded.filename == "classify_openai.jsonl"
    assert uploaded.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes


def test_upload_with_problems_or_another_purpose_is_refused(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(
            file=("bad.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n'), purpose="fine-tune"
        )
    assert "line 1" in str(caught.value) or "1 problem" in str(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")  # batch: test_openai_batch.py
    assert "purpose" in str(caught.value)


def test_fine_tuning_job(client, job) -> None:
    assert isinstance(job, openai.types.fine_tuning.FineTuningJob)
    assert job.fine_tuned_model == job.id and job.hyperparameters.n_epochs == TINY_EPOCHS
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=5)]
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert all(isinstance(e, openai.types.fine_tuning.FineTuningJobEvent) for e in events)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all("train_loss" in e.data for e in metrics)
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)  # newest first


def test_checkpoints_one_per_epoch_listed_newest_first_and_each_answers_by_name(server, key, client, job) -> None:
    """Every epoch's checkpoint is listed (``fine_tuning.job.checkpoint``), newest first, and answers as a model of
    its own; the native job resource lists them too, with the one the tuned model is and why."""
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert all(isinstance(c, openai.types.fine_tuning.jobs.FineTuningJobCheckpoint) for c in checkpoints)
    assert len(checkpoints) == TINY_EPOCHS
    steps = [c.step_number for c in checkpoints]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == TINY_EPOCHS
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert steps[0] == max(m["step"] for m in metrics)
    names = [c.fine_tuned_model_checkpoint for c in checkpoints]
    assert names == [f"{job.fine_tuned_model}:ckpt-step-{step}" for step in steps]
    assert all(c.metrics.train_loss is not None for c in checkpoints)
    page = client.fine_tuning.jobs.checkpoints.list(job.id, limit=1, after=checkpoints[0].id)
    assert [c.id for c in page.data] == [checkpoints[1].id] and page.has_more
    first = client.chat.completions.create(model=names[-1], messages=MESSAGES, temperature=0, max_tokens=12)
    assert first.model == names[-1] and first.choices[0].finish_reason in ("stop", "length")

    def answer(model: str) -> str | None:
        done = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=12)
        return done.choices[0].message.content

    assert answer(names[0]) == answer(job.fine_tuned_model)  # the tuned model is its best (here: last) checkpoint
    with pytest.raises(openai.NotFoundError, match="ckpt-step-999"):
        client.chat.completions.create(model=f"{job.fine_tuned_model}:ckpt-step-999", messages=MESSAGES)
    gemini = server.client.post(
        f"/v1/models/{names[0]}:generateContent",
        headers=server.headers(key),
        json={"contents": [{"role": "user", "parts": [{"text": "my card never arrived"}]}],
              "generationConfig": {"temperature": 0, "maxOutputTokens": 12}},
    )  # fmt: skip
    assert gemini.status_code == 200
    assert gemini.json()["candidates"][0]["content"]["parts"][0]["text"] == answer(names[0])
    native = server.client.get(f"/v1/tuningJobs/{job.id}", headers=server.headers(key)).json()["tunedModel"]
    assert [c["model"] for c in native["checkpoints"]] == [f"models/{n}" for n in reversed(names)]
    assert native["bestCheckpoint"]["why"].startswith("the last epoch's")  # 10 examples: too few to hold some out
    assert native["validation"] == (
        "no validation: 10 training examples are too few for an automatic split (it needs 40); "
        "pass a validation file to have one"
    )


def test_cancel(client, uploaded) -> None:
    created = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, hyperparameters={"n_epochs": 1})
    cancelled = client.fine_tuning.jobs.cancel(created.id)
    assert cancelled.id == created.id and cancelled.status in ("running", "cancelled")
    wait_for(lambda: client.fine_tuning.jobs.retrieve(created.id).status == "cancelled", "the cancel")


def test_models(client, job) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert "smollm2-135m-instruct" in listed and job.fine_tuned_model in listed
    assert listed[job.fine_tuned_model].object == "model"
    assert client.models.retrieve(job.fine_tuned_model).owned_by == "clients-openai"


MESSAGES = [
    {"role": "system", "content": "Route the ticket."},
    {"role": "user", "content": "my card never arrived"},
]


def test_chat_completion_streamed_and_not(client, job) -> None:
    whole = client.chat.completions.create(model=job.fine_tuned_model, messages=MESSAGES, temperature=0, max_tokens=12)
    assert isinstance(whole, openai.types.chat.ChatCompletion)
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens >= 1
    text = whole.choices[0].message.content
    started = time.perf_counter()
    arrivals, chunks = [], []
    stream = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        arrivals.append(time.perf_counter() - started)
        chunks.append(chunk)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    content = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(content) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    with_text = [t for c, t in zip(chunks, arrivals) if c.choices and c.choices[0].delta.content]
    if len(with_text) > 1:  # the host streams token by token (issue #13): the first text before the last
        assert with_text[0] < with_text[-1]


def test_completion(client, job) -> None:
    done = client.completions.create(model=job.fine_tuned_model, prompt="my card never arrived", max_tokens=8)
    assert isinstance(done, openai.types.Completion) and done.choices[0].finish_reason in ("stop", "length")
    streamed = client.completions.create(
        model=job.fine_tuned_model, prompt="my card never arrived", max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text


def test_unsupported_fields_are_named(client, job) -> None:
    for extra, field in (
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": True, "stream": True}, "logprobs"),  # returned without a stream only
        ({"top_logprobs": 2}, "top_logprobs"),  # needs logprobs
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=job.fine_tuned_model, messages=MESSAGES, **extra)
        assert field in str(caught.value), (field, str(caught.value))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
