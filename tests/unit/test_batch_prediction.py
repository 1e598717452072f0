"""Batch prediction: line checks, both result forms, and a worker SIGKILLed mid-file that resumes with every
line answered exactly once.

.venv/bin/python -m pytest tests/unit/test_batch_prediction.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunery.jobs import batch
from tunery.jobs.batch import BatchSpec, parse_line, run_batch


def _vertex_lines(n: int, tokens: int = 40) -> list[str]:
    return [
        json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": f"hello world #{i}"}]}],
                                "generationConfig": {"maxOutputTokens": tokens}}})
        for i in range(n)
    ]  # fmt: skip


def _fake(requests):
    """A model that answers each request with its own text (checks the plumbing, not the model)."""
    out = []
    for r in requests:
        text = r["contents"][-1]["parts"][0]["text"]
        if "fail" in text:
            out.append(RuntimeError("the model failed"))
        else:
            out.append(
                {
                    "candidates": [
                        {
                            "content": {"role": "model", "parts": [{"text": text.upper()}]},
                            "finishReason": "STOP",
                            "index": 0,
                        }
                    ],
                    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
                }
            )
    return out


def test_bad_lines_fail_alone_with_their_line_and_field():
    assert "line 3: not JSON" in parse_line("{oops", 3).error
    assert "line 4" in parse_line("[1, 2]", 4).error
    bad = parse_line(json.dumps({"request": {"contents": [{"role": "model", "parts": [{"text": "x"}]}]}}), 5)
    assert "line 5" in bad.error and "contents[0].role" in bad.error
    bad = parse_line(json.dumps({"request": {"contents": [{"parts": [{"text": "x"}]}],
                                             "generationConfig": {"temperature": 9}}}), 6)  # fmt: skip
    assert "generationConfig.temperature" in bad.error
    openai = parse_line(json.dumps({"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}), 7)
    assert "line 7" in openai.error and "POST" in openai.error
    openai = parse_line(json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": "m", "messages": []}}), 8)  # fmt: skip
    assert openai.key == "b" and "body.messages" in openai.error
    good = parse_line(
        json.dumps(
            {
                "custom_id": "c",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            }
        ),
        9,
    )
    assert good.error is None and good.request["contents"][0]["parts"][0]["text"] == "hi"


def test_openai_batch_writes_output_and_error_files(tmp_path):
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": f"{'fail ' if i == 3 else ''}text {i}"}]}}
        for i in range(10)
    ]  # fmt: skip
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    progress = run_batch(BatchSpec(model="m", input=str(source), output=str(tmp_path / "out")), _fake)
    assert (progress.total, progress.done, progress.succeeded, progress.failed) == (11, 11, 9, 2)
    output = [json.loads(x) for x in (tmp_path / "out" / "output.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(10) if i != 3]
    assert output[0]["response"]["status_code"] == 200
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "TEXT 0"
    assert [e["custom_id"] for e in errors] == ["r3", None]
    assert "the model failed" in errors[0]["error"]["message"] and "line 11" in errors[1]["error"]["message"]


def test_a_partial_chunk_past_the_done_index_is_redone_once(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(_vertex_lines(20)) + "\n")
    spec = BatchSpec(model="m", input=str(source), output=str(tmp_path / "out"))
    stops = iter([False, False, True])  # two chunks, then stop (a server going down)
    first = run_batch(spec, _fake, should_stop=lambda: next(stops))
    assert first.done == 2 * batch.CHUNK_LINES
    results = tmp_path / "out" / "predictions.jsonl"
    with results.open("a") as fh:  # what a worker killed while writing the third chunk leaves
        fh.write(json.dumps({"request": {}, "response": {}}) + '\n{"request": {"con')
    final = run_batch(spec, _fake)
    assert (final.done, final.succeeded) == (20, 20)
    texts = [json.loads(x)["request"]["contents"][0]["parts"][0]["text"] for x in results.read_text().splitlines()]
    assert texts == [f"hello world #{i}" for i in range(20)]


def test_killed_worker_resumes_with_every_line_answered_exactly_once(tmp_path, tiny_model):
    from tunery.jobs.store import RUNNING, SUCCEEDED, Store

    source = tmp_path / "requests.jsonl"
    lines = _vertex_lines(40)
    lines[5] = "{not json"
    source.write_text("\n".join(lines) + "\n")
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = Store(url)
    spec = BatchSpec(model=str(tiny_model), input=str(source), output=str(tmp_path / "out"))
    job = batch.create(store, "default", spec)
    env = {**os.environ, "TUNERY_DATABASE_URL": url, "TUNERY_HOME": str(tmp_path / "home")}
    done_file = tmp_path / "out" / "done.json"

    def worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tunery.jobs.worker", job.id], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    first = worker()
    store.claim_job(job.id, "test", first.pid)  # as the scheduler records the worker it started
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if done_file.is_file() and json.loads(done_file.read_text())["progress"]["done"] >= batch.CHUNK_LINES:
            break
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_at_kill = json.loads(done_file.read_text())["progress"]["done"]
    assert batch.CHUNK_LINES <= done_at_kill < 40, "the kill should land mid-file"
    assert store.get_job(None, job.id).state == RUNNING

    second = worker()
    store.claim_job(job.id, "test", second.pid)
    assert second.wait(180) == 0
    ended = store.get_job(None, job.id)
    assert ended.state == SUCCEEDED
    assert ended.stats["linesDone"] == 40 and ended.stats["failedCount"] == 1
    records = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 40
    texts = [r["request"]["contents"][0]["parts"][0]["text"] if isinstance(r["request"], dict) else r["request"]
             for r in records]  # fmt: skip
    assert texts == [f"hello world #{i}" if i != 5 else "{not json\n" for i in range(40)]
    assert "line 6: not JSON" in records[5]["status"]
    assert all(r["response"]["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS") for i, r in enumerate(records)
               if i != 5)  # fmt: skip
    events = store.events(None, job.id)
    assert any(e["type"] == "metrics" and e["data"]["linesDone"] == 40 for e in events)
    listed, _ = store.list_jobs("default", batch=True)
    assert [j.id for j in listed] == [job.id] and store.list_jobs("default")[0] == []


@pytest.mark.parametrize("form", ["vertex"])
def test_cli_predict_writes_results_with_a_progress_bar(tmp_path, tiny_model, form):
    from typer.testing import CliRunner

    from tunery.cli import app

    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join(_vertex_lines(10, tokens=8)) + "\n")
    output = tmp_path / "results.jsonl"
    result = CliRunner().invoke(app, ["predict", str(tiny_model), "--input", str(source), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "10 of 10 lines" in result.output and "lines answered: 10/10" in result.output  # a line for a log
    records = [json.loads(x) for x in output.read_text().splitlines()]
    assert len(records) == 10 and all("response" in r for r in records)
    again = CliRunner().invoke(app, ["predict", str(tiny_model), "--input", str(source), "--output", str(output)])
    assert again.exit_code == 0 and len(output.read_text().splitlines()) == 10  # done already: nothing redone
    assert Path(str(output) + ".done.json").is_file()


def test_cancelled_job_ends_cancelled_keeping_the_answered_lines_once(tmp_path, tiny_model):
    """A cancel mid-file (the store's flag and the scheduler's SIGTERM): CANCELLED, the lines answered before it
    kept in order, none twice, and nothing past what ``done.json`` vouches for."""
    from tunery.jobs.store import CANCELLED, Store

    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join(_vertex_lines(40)) + "\n")
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = Store(url)
    job = batch.create(store, "default", BatchSpec(model=str(tiny_model), input=str(source), output=str(tmp_path)))
    env = {**os.environ, "TUNERY_DATABASE_URL": url, "TUNERY_HOME": str(tmp_path / "home")}
    worker = subprocess.Popen([sys.executable, "-m", "tunery.jobs.worker", job.id], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    store.claim_job(job.id, "test", worker.pid)
    done_file = tmp_path / "done.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.poll() is None:
        if done_file.is_file() and json.loads(done_file.read_text())["progress"]["done"] >= batch.CHUNK_LINES:
            break
        time.sleep(0.01)
    store.request_cancel("default", job.id)
    worker.send_signal(signal.SIGTERM)  # what the scheduler does to a cancelled job's worker
    assert worker.wait(120) == 0
    ended = store.get_job(None, job.id)
    assert ended.state == CANCELLED, (ended.state, ended.error)
    done = json.loads(done_file.read_text())["progress"]["done"]
    assert batch.CHUNK_LINES <= done < 40 and "cancelled after" in ended.error["message"]
    records = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    texts = [r["request"]["contents"][0]["parts"][0]["text"] for r in records]
    assert texts == [f"hello world #{i}" for i in range(done)]  # in order, each once, none past done.json
    assert all(r["response"]["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS") for r in records)
