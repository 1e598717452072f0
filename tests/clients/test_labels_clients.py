"""A tuned model's kept label set through the official clients (openai, google-genai), unmodified.

The model is tuned on the ticket fixture (3 labels, kept in its ``tunery.json``). Each surface answers with a
label by default, gives the same answer when the request opts out (OpenAI ``response_format={"type": "text"}``,
Gemini ``response_mime_type="text/plain"``) and that answer is a label already (greedy), and returns the answer's
token probabilities in the shapes the clients parse (OpenAI ``logprobs``/``top_logprobs``, Gemini
``response_logprobs``/``logprobs`` → ``logprobs_result``, ``avg_logprobs``).

    .venv/bin/python -m pytest tests/clients/test_labels_clients.py -x -q
"""

from __future__ import annotations

import math

import pytest
from client_helpers import TINY_EPOCHS, TINY_RATE, wait_for

openai = pytest.importorskip("openai", reason="openai is not installed (bash scripts/install.sh test)")
genai = pytest.importorskip("google.genai", reason="google-genai is not installed (bash scripts/install.sh test)")
from google.genai import types  # noqa: E402

LABELS = {"card_arrival", "card_declined", "transfer_failed"}
TICKETS = ["my card never arrived", "the shop says my card was declined again", "the transfer failed twice"]
SYSTEM = "Route the ticket."


@pytest.fixture(scope="module")
def client(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def job(server, client):
    with (server.data_root / "classify_openai.jsonl").open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="fine-tune")
    created = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": TINY_EPOCHS, "learning_rate_multiplier": TINY_RATE},
    )
    current = created

    def ended() -> bool:
        nonlocal current
        current = client.fine_tuning.jobs.retrieve(created.id)
        return current.status in ("succeeded", "failed", "cancelled")

    wait_for(ended, f"fine-tuning job {created.id} ends")
    assert current.status == "succeeded", current
    return current


def _chat(client, job, text, **extra):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return client.chat.completions.create(
        model=job.fine_tuned_model, messages=messages, temperature=0, max_tokens=12, **extra
    )


def test_openai_chat_keeps_the_label_set_and_the_models_answer(client, job):
    for text in TICKETS:
        kept = _chat(client, job, text).choices[0].message.content
        free = _chat(client, job, text, response_format={"type": "text"}).choices[0].message.content
        assert kept in LABELS
        if free in LABELS:
            assert kept == free


def test_openai_logprobs_of_the_label(client, job):
    choice = _chat(client, job, TICKETS[0], logprobs=True, top_logprobs=5).choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    assert 0 < math.exp(sum(t.logprob for t in content)) <= 1  # the label's probability
    for token in content:
        assert token.top_logprobs[0].token == token.token and token.bytes == list(token.token.encode())
        assert sum(math.exp(t.logprob) for t in token.top_logprobs) <= 1 + 1e-5
    starts = {t.token for t in content[0].top_logprobs}
    assert all(any(label.startswith(s) for label in LABELS) for s in starts)  # only labels may begin
    assert _chat(client, job, TICKETS[0]).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="stream"):
        _chat(client, job, TICKETS[0], logprobs=True, stream=True)


def test_gemini_generate_keeps_the_label_set_and_returns_logprobs(server, key, job):
    gemini = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=server.url))
    model = f"tunedModels/{job.id}"
    for text in TICKETS:
        config = types.GenerateContentConfig(temperature=0, max_output_tokens=12, system_instruction=SYSTEM)
        kept = gemini.models.generate_content(model=model, contents=text, config=config).text
        opted = config.model_copy(update={"response_mime_type": "text/plain"})
        free = gemini.models.generate_content(model=model, contents=text, config=opted).text
        assert kept in LABELS and (kept == free or free not in LABELS)
    asked = types.GenerateContentConfig(temperature=0, max_output_tokens=12, system_instruction=SYSTEM,
                                        response_logprobs=True, logprobs=3)  # fmt: skip
    candidate = gemini.models.generate_content(model=model, contents=TICKETS[0], config=asked).candidates[0]
    result = candidate.logprobs_result
    chosen = result.chosen_candidates
    assert "".join(c.token for c in chosen) == candidate.content.parts[0].text
    assert math.isclose(candidate.avg_logprobs, sum(c.log_probability for c in chosen) / len(chosen))
    for place, top in zip(chosen, result.top_candidates, strict=True):
        assert top.candidates[0].token_id == place.token_id and len(top.candidates) <= 3
        assert sum(math.exp(c.log_probability) for c in top.candidates) <= 1 + 1e-5
