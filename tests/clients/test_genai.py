"""google-genai in Gemini mode (``Client(api_key=KEY, http_options=HttpOptions(base_url=URL))``), unmodified.

Upload (the resumable protocol), tune on inline examples, wait for the job, then generate, chat, stream
and count tokens on the tuned model, each answer parsed by google-genai's own types; the same job is
``tuningJobs/{id}`` on the native path. Bodies as Google's REST examples write them (snake_case), fields that
change nothing (``safetySettings``) and fields that would (``tools``) go over plain HTTP, with each way of
sending the key.

    .venv/bin/python -m pytest tests/clients/test_genai.py -x -q
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from client_helpers import TINY_EPOCHS, TINY_RATE, wait_for

genai = pytest.importorskip("google.genai", reason="google-genai is not installed (bash scripts/install.sh test)")
from google.genai import errors, types  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The SDK's tuning implementation is experimental")
GREEDY = types.GenerateContentConfig(temperature=0, max_output_tokens=12)


@pytest.fixture(scope="module")
def client(server, key):
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=server.url))


@pytest.fixture(scope="module")
def tuned(server, key, client) -> str:
    """A model tuned through google-genai's ``tunings.tune`` on inline examples, polled to the end.

    google-genai 3.6 drops ``training_dataset.examples`` (and ``learning_rate_multiplier``) from the Gemini
    API body it builds, so the examples go in ``http_options.extra_body``, the client's own way to add to a
    request; the same client, unpatched, then reads the job and generates with it."""
    rows = [json.loads(line) for line in (server.data_root / "classify_gemini.jsonl").read_text().splitlines()]
    texts = [(r["contents"][0]["parts"][0]["text"], r["contents"][1]["parts"][0]["text"]) for r in rows]
    examples = [types.TuningExample(text_input=text, output=label) for text, label in texts]
    data = {"examples": {"examples": [{"textInput": text, "output": label} for text, label in texts]}}
    job = client.tunings.tune(
        base_model="tiny",
        training_dataset=types.TuningDataset(examples=examples),
        config=types.CreateTuningJobConfig(
            epoch_count=TINY_EPOCHS,
            tuned_model_display_name="genai tuned",
            http_options=types.HttpOptions(
                extra_body={
                    "tuningTask": {"trainingData": data, "hyperparameters": {"learningRateMultiplier": TINY_RATE}}
                }
            ),
        ),
    )
    assert job.name.startswith("tunedModels/")
    job = _wait(client, job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED, job
    assert job.tuned_model is not None and job.tuned_model.model == job.name
    native = server.client.get(f"/v1/tuningJobs/{job.name.split('/')[1]}", headers=server.headers(key)).json()
    assert native["state"] == "JOB_STATE_SUCCEEDED"  # one job, two names
    return job.tuned_model.model


def _wait(client, name: str):
    job = client.tunings.get(name=name)

    def ended() -> bool:
        nonlocal job
        job = client.tunings.get(name=name)
        return bool(job.has_ended)

    wait_for(ended, f"{name} ends")
    return job


def test_tune_without_examples_names_the_field(client) -> None:
    """What google-genai 3.6 sends without extra_body: no training data, so a 400 that says so."""
    with pytest.raises(errors.ClientError) as caught:
        client.tunings.tune(
            base_model="tiny",
            training_dataset=types.TuningDataset(examples=[types.TuningExample(text_input="a", output="b")]),
        )
    assert caught.value.code == 400 and "tuningTask" in caught.value.message


def test_files_upload_list_get_delete(server, key, client, tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes((server.data_root / "classify_gemini.jsonl").read_bytes())
    uploaded = client.files.upload(file=str(path), config=types.UploadFileConfig(mime_type="application/jsonl"))
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == path.stat().st_size
    assert uploaded.state == types.FileState.ACTIVE
    assert uploaded.name in [f.name for f in client.files.list()]
    assert client.files.get(name=uploaded.name).display_name == "train.jsonl"
    # checked exactly as POST /v1/files checks an upload: the native resource counted its examples
    native = server.client.get(f"/v1/{uploaded.name}", headers=server.headers(key)).json()
    assert native["exampleCount"] == 10
    client.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as caught:
        client.files.get(name=uploaded.name)
    assert caught.value.code == 404


def test_upload_with_problems_is_refused_by_line(server, client, tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}\nnot json\n')
    with pytest.raises(errors.ClientError) as caught:
        client.files.upload(file=str(path), config=types.UploadFileConfig(mime_type="application/jsonl"))
    assert caught.value.code == 400
    assert "line" in json.dumps(caught.value.details) or "2" in caught.value.message


def test_generate_chat_count_on_the_tuned_model(client, tuned) -> None:
    answer = client.models.generate_content(model=tuned, contents="my card never arrived", config=GREEDY)
    assert isinstance(answer, types.GenerateContentResponse) and answer.text
    assert answer.candidates[0].finish_reason in (types.FinishReason.STOP, types.FinishReason.MAX_TOKENS)
    assert answer.usage_metadata.candidates_token_count >= 1
    system = types.GenerateContentConfig(
        system_instruction="Route the ticket.",
        temperature=0,
        max_output_tokens=12,
        safety_settings=[types.SafetySetting(category="HARM_CATEGORY_HATE_SPEECH", threshold="BLOCK_NONE")],
    )
    with_system = client.models.generate_content(model=tuned, contents="my card never arrived", config=system)
    assert with_system.text
    chat = client.chats.create(model=tuned, config=GREEDY)
    first = chat.send_message("hello")
    second = chat.send_message("my card never arrived")
    assert first.text and second.text and len(chat.get_history()) == 4
    counted = client.models.count_tokens(model=tuned, contents="my card never arrived")
    assert counted.total_tokens == answer.usage_metadata.prompt_token_count


def test_stream_joins_to_the_greedy_answer(client, tuned) -> None:
    whole = client.models.generate_content(model=tuned, contents="the transfer failed", config=GREEDY)
    started = time.perf_counter()
    arrivals, chunks = [], []
    for chunk in client.models.generate_content_stream(model=tuned, contents="the transfer failed", config=GREEDY):
        arrivals.append(time.perf_counter() - started)
        chunks.append(chunk)
    assert all(isinstance(c, types.GenerateContentResponse) for c in chunks)
    assert "".join(c.text or "" for c in chunks) == whole.text
    assert chunks[-1].candidates[0].finish_reason is not None and chunks[-1].usage_metadata is not None
    if len(chunks) > 1:  # the host streams token by token (issue #13): the first chunk comes before the last
        assert arrivals[0] < arrivals[-1]


def test_models_list_and_get_include_the_tuned_model(client, tuned) -> None:
    base = client.models.get(model="smollm2-135m-instruct")
    assert base.name == "models/smollm2-135m-instruct"
    names = [m.name for m in client.models.list()]
    assert "models/smollm2-135m-instruct" in names
    tuned_id = tuned.split("/")[1]
    assert f"models/{tuned_id}" in names
    assert client.models.get(model=tuned).name == tuned  # tunedModels/{id}
    assert client.models.get(model=f"models/{tuned_id}").name == f"models/{tuned_id}"


def test_rest_bodies_and_keys(server, key, tuned) -> None:
    """snake_case as Google's curl examples write it; a key by header or ?key=; refused fields named."""
    url = f"/v1/{tuned}:generateContent"
    snake = {
        "system_instruction": {"role": "system", "parts": [{"text": "Route the ticket."}]},
        "contents": [{"parts": [{"text": "my card never arrived"}]}],
        "generation_config": {"max_output_tokens": 8, "temperature": 0, "response_mime_type": "text/plain"},
        "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    }
    camel = {
        "systemInstruction": {"parts": [{"text": "Route the ticket."}]},
        "contents": [{"role": "user", "parts": [{"text": "my card never arrived"}]}],
        "generationConfig": {"maxOutputTokens": 8, "temperature": 0, "responseMimeType": "text/plain"},
    }
    by_header = server.client.post(url, json=snake, headers={"x-goog-api-key": key})
    by_query = server.client.post(url, json=camel, params={"key": key})
    assert by_header.status_code == by_query.status_code == 200, (by_header.text, by_query.text)
    assert by_header.json()["candidates"] == by_query.json()["candidates"]
    refused = server.client.post(
        url, json={**camel, "tools": [{"functionDeclarations": [{"name": "f"}]}]}, params={"key": key}
    )
    assert refused.status_code == 400 and _fields(refused) == {"tools"}
    penalised = {**camel, "generationConfig": {"presencePenalty": 0.5}}
    refused = server.client.post(url, json=penalised, params={"key": key})
    assert refused.status_code == 400 and _fields(refused) == {"generationConfig.presencePenalty"}
    assert server.client.post(url, json=camel).status_code == 401
    assert server.client.post(url, json=camel, params={"key": "tk_bad_key"}).status_code == 401
    both = server.client.post(url, json=camel, params={"key": "tk_bad_key"}, headers={"x-goog-api-key": key})
    assert both.status_code == 401  # every key a request carries must be valid


def _fields(response: httpx.Response) -> set[str]:
    """The fields a 400 names (Google's BadRequest detail)."""
    details = response.json()["error"].get("details", [])
    return {v["field"] for d in details for v in d.get("fieldViolations", [])}


def test_stream_without_sse_is_a_json_array(server, key, tuned) -> None:
    body = {"contents": [{"parts": [{"text": "hello"}]}], "generationConfig": {"maxOutputTokens": 6}}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        array = http.post(f"/v1/{tuned}:streamGenerateContent", json=body, headers={"x-goog-api-key": key})
        whole = http.post(f"/v1/{tuned}:generateContent", json=body, headers={"x-goog-api-key": key})
    assert array.status_code == 200, array.text
    chunks = array.json()
    assert isinstance(chunks, list) and chunks
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == whole.json()["candidates"][0]["content"]["parts"][0]["text"]


# --- Vertex mode: the same client with vertexai=True --------------------------------------------------------


@pytest.fixture(scope="module")
def vertex(server, key):
    """google-genai's Vertex mode with a project and location and a token credential holding the key."""
    from google.oauth2.credentials import Credentials

    return genai.Client(
        vertexai=True,
        project="my-project",
        location="us-central1",
        credentials=Credentials(token=key),
        http_options=types.HttpOptions(base_url=server.url),
    )


def test_vertex_mode_tunes_and_generates(server, key, vertex) -> None:
    job = vertex.tunings.tune(
        base_model="tiny",
        training_dataset=types.TuningDataset(gcs_uri="classify_gemini.jsonl"),  # a dataset under the data root
        config=types.CreateTuningJobConfig(
            epoch_count=TINY_EPOCHS,
            learning_rate_multiplier=TINY_RATE,
            adapter_size="ADAPTER_SIZE_FOUR",
            tuned_model_display_name="vertex mode",
        ),
    )  # Vertex answers 200: an SDK that took 201 for an error no longer raises
    assert job.name.startswith("projects/my-project/locations/us-central1/tuningJobs/")
    job_id = job.name.rsplit("/", 1)[1]
    native = server.client.get(f"/v1/tuningJobs/{job_id}", headers=server.headers(key)).json()
    assert native["supervisedTuningSpec"]["hyperParameters"]["adapterSize"] == 4  # the enum name's rank
    assert job.name in [j.name for j in vertex.tunings.list()]
    job = _wait(vertex, job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED, job
    assert job.tuned_model.endpoint == f"projects/my-project/locations/us-central1/endpoints/{job_id}"
    answer = vertex.models.generate_content(
        model=job.tuned_model.endpoint, contents="my card never arrived", config=GREEDY
    )
    assert answer.text and answer.usage_metadata.total_token_count > 0
    streamed = vertex.models.generate_content_stream(
        model=job.tuned_model.endpoint, contents="my card never arrived", config=GREEDY
    )
    assert "".join(c.text or "" for c in streamed) == answer.text
    counted = vertex.models.count_tokens(model=job.tuned_model.endpoint, contents="my card never arrived")
    assert counted.total_tokens == answer.usage_metadata.prompt_token_count
    assert vertex.models.get(model="smollm2-135m-instruct").name == "publishers/google/models/smollm2-135m-instruct"


def test_vertex_mode_refuses_an_unknown_adapter_size(server, key) -> None:
    body = {
        "baseModel": "tiny",
        "supervisedTuningSpec": {
            "trainingDatasetUri": "classify_gemini.jsonl",
            "hyperParameters": {"adapterSize": "ADAPTER_SIZE_SIXTY_FOUR", "epochCount": "x"},
        },
    }
    url = "/v1beta1/projects/p/locations/l/tuningJobs"
    refused = server.client.post(url, json=body, headers=server.headers(key))
    assert refused.status_code == 400
    fields = {v["field"] for v in refused.json()["error"]["details"][0]["fieldViolations"]}
    assert fields == {
        "supervisedTuningSpec.hyperParameters.adapterSize",
        "supervisedTuningSpec.hyperParameters.epochCount",
    }
    body["supervisedTuningSpec"]["hyperParameters"] = {"adapterSize": 7}  # no such proto code: never a rank 7
    assert server.client.post(url, json=body, headers=server.headers(key)).status_code == 400
