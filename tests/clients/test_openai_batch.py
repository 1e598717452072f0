"""The openai client's batch flow, unmodified, against a real ``tunery serve``.

``files.create(purpose="batch")`` (each line's envelope checked, a bad one refused by line and field),
``batches.create`` / ``retrieve`` (polled to ``completed``) / ``list`` / ``cancel``, and
``files.content(output_file_id)`` / ``(error_file_id)``: a line whose body tunery refuses (``n`` = 2) fails
alone, into the error file, while the others are answered (the same request twice, the same answer).

    .venv/bin/python -m pytest tests/clients/test_openai_batch.py -x -q
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from client_helpers import wait_for

openai = pytest.importorskip("openai", reason="openai is not installed (bash scripts/install.sh test)")

ENDPOINT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def client(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def _line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
            "body": {"model": "tiny", "messages": messages, "max_tokens": 4, "temperature": 0, **body}}  # fmt: skip


def _jsonl(lines: list[Any]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def _ended(client, batch_id: str, timeout: float = 90) -> Any:
    found = None

    def ended() -> bool:
        nonlocal found
        found = client.batches.retrieve(batch_id)
        return found.status in ("completed", "failed", "cancelled", "expired")

    wait_for(ended, f"batch {batch_id} ends", timeout=timeout)
    return found


def test_batch_end_to_end(client) -> None:
    lines = [_line("a", "my card never arrived"), _line("b", "refund please"), _line("bad", "hi", n=2),
             _line("c", "my card never arrived")]  # fmt: skip
    data = _jsonl(lines)
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert isinstance(uploaded, openai.types.FileObject) and uploaded.purpose == "batch"
    assert uploaded.bytes == len(data) and client.files.content(uploaded.id).content == data

    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", metadata={"run": "clients"}
    )
    assert isinstance(created, openai.types.Batch)
    assert created.status in ("validating", "in_progress") and created.input_file_id == uploaded.id
    done = _ended(client, created.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 3, 1)
    assert done.metadata == {"run": "clients"} and done.completed_at >= done.created_at
    assert done.output_file_id and done.error_file_id and "/" not in done.output_file_id + done.error_file_id

    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == ["a", "b", "c"]  # input order, each once
    assert all(o["error"] is None and o["response"]["status_code"] == 200 for o in output)
    answers = {o["custom_id"]: openai.types.chat.ChatCompletion.model_validate(o["response"]["body"]) for o in output}
    assert all(1 <= x.usage.completion_tokens <= 4 and x.object == "chat.completion" for x in answers.values())
    assert answers["a"].choices[0].message.content == answers["c"].choices[0].message.content  # greedy, batched
    assert answers["a"].usage == answers["c"].usage

    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["bad"]
    assert errors[0]["response"]["status_code"] == 400 and "n" in errors[0]["error"]["message"]
    assert errors[0]["error"]["message"] == errors[0]["response"]["body"]["error"]["message"]

    assert created.id in [b.id for b in client.batches.list(limit=10)]


def _violations(caught: pytest.ExceptionInfo) -> set[tuple[int, str]]:
    body = caught.value.body
    found = [v for d in body.get("details", []) for v in d.get("fieldViolations", [])]
    return {(v.get("line", 0), v["field"]) for v in found}


def test_upload_with_bad_lines_is_refused_by_line_and_field(client) -> None:
    missing_body = {k: v for k, v in _line("d", "x").items() if k != "body"}
    lines = [_line("a", "hi"), _line("a", "again"), {**_line("b", "x"), "url": "/v1/embeddings"}, missing_body,
             _line("e", "x", model="other"), {**_line("f", "x"), "method": "GET"}]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", _jsonl(lines) + b"{oops\n"), purpose="batch")
    assert _violations(caught) == {(2, "custom_id"), (3, "url"), (4, "body"), (5, "body.model"), (6, "method"),
                                   (7, "")}  # fmt: skip
    assert "again (first on line 1)" in str(caught.value) and "'/v1/embeddings'" in str(caught.value)
    assert "bad.jsonl" not in [f.filename for f in client.files.list()]  # not kept


def test_create_checks_the_file_against_the_endpoint(server, client) -> None:
    uploaded = client.files.create(file=("chat.jsonl", _jsonl([_line("a", "hi")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
    assert _violations(caught) == {(1, "url")}
    with (server.data_root / "classify_openai.jsonl").open("rb") as fh:
        dataset = client.files.create(file=fh, purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=dataset.id, endpoint=ENDPOINT, completion_window="24h")
    assert "input_file_id" in str(caught.value) and "purpose 'batch'" in str(caught.value)


def test_cancel(client) -> None:
    lines = [_line(f"r{i}", f"ticket number {i}", max_tokens=16) for i in range(40)]
    uploaded = client.files.create(file=("many.jsonl", _jsonl(lines)), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")
    cancelling = client.batches.cancel(created.id)
    assert cancelling.id == created.id and cancelling.status in ("cancelling", "cancelled")
    done = _ended(client, created.id, timeout=60)
    assert done.status == "cancelled" and done.cancelled_at and done.request_counts.completed < 40
