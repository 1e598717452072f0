"""The model host subprocess and its torch-free client: Gemini requests in, the in-process engine's answers out.

.venv/bin/python -m pytest tests/unit/test_serving_host.py -x -q
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from tunery.cli import app
from tunery.errors import ConfigError, DatasetError, ModelError, NotFoundError, ServingError
from tunery.serving import Engine
from tunery.serving.gemini import (
    Generation,
    count_tokens_response,
    generate_response,
    generation_config,
    parse_count_tokens_request,
    parse_generate_request,
)
from tunery.serving.process import ModelHost, http_status

CHILD_ENV = {"OMP_NUM_THREADS": "1", "TUNERY_SERVING_WEIGHTS": "fp32"}  # the in-process engine's weights
CONTENTS = [{"role": "user", "parts": [{"text": "my card never arrived"}]}]
REQUEST = {
    "systemInstruction": {"parts": [{"text": "Route the ticket."}]},
    "contents": CONTENTS,
    "generationConfig": {"maxOutputTokens": 6},
}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    log = tmp_path_factory.mktemp("model-host") / "host.log"
    with ModelHost(env=CHILD_ENV, timeout=120, log_path=log) as model_host:
        yield model_host


def _without_latency(response: dict) -> dict:
    assert response.pop("latencyMs") > 0
    return response


# --- the host, against the engine in this process ------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny_model", "tuned_lora"])
def test_generate_equals_the_engine_in_process(host, request, which):
    model = str(request.getfixturevalue(which))
    reply = host.generate(model, REQUEST, model_version="my-model")
    example, config = parse_generate_request(REQUEST)
    expected = generate_response(Engine(model).generate(example, config), "my-model")
    assert _without_latency(reply) == _without_latency(expected)
    candidate = reply["candidates"][0]
    assert candidate["content"]["role"] == "model" and candidate["index"] == 0
    usage = reply["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    if which == "tuned_lora":  # it learned the labels and stops by itself
        assert candidate["finishReason"] == "STOP"
        assert candidate["content"]["parts"][0]["text"] in {"card_arrival", "card_declined", "transfer_failed"}


def test_count_tokens_equals_the_engine(host, tiny_model):
    example = parse_count_tokens_request({"contents": CONTENTS, "systemInstruction": "Route the ticket."})
    expected = Engine(tiny_model).count_tokens(example)
    assert host.count_tokens(str(tiny_model), {"contents": CONTENTS, "systemInstruction": "Route the ticket."}) == {
        "totalTokens": expected
    }
    wrapped = {"generateContentRequest": {"model": "models/x", **REQUEST}}
    assert host.count_tokens(str(tiny_model), wrapped) == {"totalTokens": expected}


def test_validate_a_good_file_gives_the_cli_statistics(host, tiny_model, data_dir):
    path = data_dir / "classify_gemini.jsonl"
    result = host.validate(path, str(tiny_model), 1024, 8)
    assert result["exampleCount"] == 10
    assert [p for p in result["problems"] if p["severity"] == "error"] == []
    cli = CliRunner().invoke(app, ["datasets", "stats", str(path), "--model", str(tiny_model), "--json"])
    assert cli.exit_code == 0, cli.output
    assert result["supervisedTuningDataStats"] == json.loads(cli.stdout)["supervisedTuningDataStats"]


def test_validate_a_bad_file_returns_every_problem_by_line_and_field(host, tiny_model, data_dir):
    result = host.validate(data_dir / "bad" / "mixed.jsonl", str(tiny_model), 1024, 8)
    problems = result["problems"]
    assert len(problems) >= 5 and result["supervisedTuningDataStats"] is None
    assert [p["line"] for p in problems] == sorted(p["line"] for p in problems)
    assert {"line": 6, "field": "contents[0].parts[0].text", "message": "empty text", "severity": "error"} in problems
    assert any(p["line"] == 6 and p["field"] == "contents[1].role" for p in problems)
    assert all(p["field"] and p["message"] for p in problems)


def test_a_bad_request_is_a_400_with_every_field_and_the_host_stays_up(host, tiny_model):
    pid = host.ping()["pid"]
    bad = {
        "contents": [{"role": "assistant", "parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 0, "topK": "many"},
        "toolz": [],
    }
    with pytest.raises(DatasetError) as caught:
        host.generate(str(tiny_model), bad)
    assert http_status(caught.value) == 400
    fields = {p.field for p in caught.value.problems}
    assert fields == {"contents[0].role", "generationConfig.maxOutputTokens", "generationConfig.topK", "toolz"}
    assert "generationConfig.maxOutputTokens: expected 1 to 8192, got 0" in str(caught.value)
    with pytest.raises(NotFoundError) as missing:
        host.generate("no-such-model", REQUEST)
    assert http_status(missing.value) == 404
    assert host.ping()["pid"] == pid
    assert host.generate(str(tiny_model), REQUEST)["candidates"]


def test_max_prompt_tokens_is_enforced_before_generating(host, tiny_model):
    n = host.count_tokens(str(tiny_model), {"generateContentRequest": REQUEST})["totalTokens"]
    with pytest.raises(ModelError, match=rf"prompt of {n} tokens is over this server's limit of {n - 1} "):
        host.generate(str(tiny_model), REQUEST, max_prompt_tokens=n - 1)
    assert host.generate(str(tiny_model), REQUEST, max_prompt_tokens=n)["usageMetadata"]["promptTokenCount"] == n


def test_bases_are_kept_least_recently_used_and_adapters_share_theirs(host, tiny_model, tiny_model_factory, tuned_lora):
    gemma, smollm2 = str(tiny_model_factory("gemma")), str(tiny_model_factory("smollm2"))
    for model in (str(tuned_lora), str(tiny_model), gemma):
        host.generate(model, REQUEST)
    assert set(host.ping()["models"]) == {str(tuned_lora), str(tiny_model), gemma}  # the adapter: on tiny's base
    host.generate(smollm2, REQUEST)  # a third base: at most 2, the least recently used goes first
    assert host.ping()["models"] == [gemma, smollm2]
    assert host.evict(gemma) is True and host.evict(gemma) is False
    assert host.ping()["models"] == [smollm2]


def _body(text: str, **config) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": config}


BATCH_BODIES = [
    _body("my card never arrived", maxOutputTokens=8),
    _body("hi", maxOutputTokens=3),
    _body("why was my transfer declined yesterday, and what do I do now?", maxOutputTokens=6),
    _body("x", maxOutputTokens=0),  # refused by itself, a 400
    _body("my card never arrived", maxOutputTokens=4, temperature=1.0, seed=3),  # sampled, with its own seed
    _body("my card never arrived", maxOutputTokens=5, stopSequences=["_"]),
]


def _outcome(host, model, body):
    try:
        return _without_latency(host.generate(model, body))
    except Exception as exc:
        return type(exc).__name__, str(exc)


def test_calls_in_flight_together_get_their_own_answers(host, tuned_lora, tiny_model):
    models = [str(tuned_lora), str(tiny_model)]
    work = [(m, body) for m in models for body in BATCH_BODIES]
    alone = [_outcome(host, m, body) for m, body in work]
    assert alone[3][0] == "DatasetError" and all(isinstance(r, dict) for r in alone[:3] + alone[4:6])
    results = [None] * len(work)
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, _outcome(host, *work[i]))) for i in range(len(work))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == alone
    batch = host.generate_batch([{"model": m, "request": body} for m, body in work])
    assert [type(r).__name__ if isinstance(r, Exception) else _without_latency(r) for r in batch] == [
        r[0] if isinstance(r, tuple) else r for r in alone
    ]


def _long(max_tokens: int = 450) -> dict:
    return _body("count with me: one two three", maxOutputTokens=max_tokens)


def _running(model_host, n: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while model_host.ping()["running"] < n:
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.02)


def test_a_request_sent_mid_batch_finishes_first_and_counts_do_not_wait(host, tiny_model):
    model = str(tiny_model)
    done: list[dict] = []
    model_host = host
    model_host.generate(model, _body("warm up", maxOutputTokens=2))
    long = threading.Thread(target=lambda: done.append(model_host.generate(model, _long())["usageMetadata"]))
    long.start()
    _running(model_host, 1)
    short = model_host.generate(model, _body("hi", maxOutputTokens=3))
    assert not done, "the short request waited for the long one"
    started = time.monotonic()
    assert model_host.count_tokens(model, {"contents": CONTENTS})["totalTokens"] > 0
    counted = time.monotonic() - started
    long.join(120)
    assert done[0]["candidatesTokenCount"] == 450 and short["usageMetadata"]["candidatesTokenCount"] == 3
    assert counted < 5


def test_streaming_chunks_join_to_the_answer_and_cancel_frees_the_row(host, tuned_lora, tiny_model):
    async def scenario(model_host):
        for model in (str(tuned_lora), str(tiny_model)):
            body = _body("my card never arrived", maxOutputTokens=12)
            whole = await model_host.agenerate(model, body)
            chunks = [chunk async for chunk in model_host.astream(model, body)]
            text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
            assert text == whole["candidates"][0]["content"]["parts"][0]["text"]
            assert chunks[-1]["candidates"][0]["finishReason"] == whole["candidates"][0]["finishReason"]
            assert chunks[-1]["usageMetadata"] == whole["usageMetadata"]
            assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
        # A cancelled task, a stream closed early and a call past its timeout hold no row afterwards.
        task = asyncio.create_task(model_host.agenerate(str(tiny_model), _long(450)))
        await asyncio.to_thread(_running, model_host, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stream = model_host.astream(str(tiny_model), _long(450))
        assert (await anext(stream))["candidates"]
        await stream.aclose()
        with pytest.raises(ServingError) as caught:
            await model_host.agenerate(str(tiny_model), _long(450), timeout=0.05)  # 450 tokens take longer than 50 ms
        assert caught.value.code == 504
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(model_host.ping))["running"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (await asyncio.to_thread(model_host.ping))["running"] == 0
        assert (await model_host.acount_tokens(str(tiny_model), {"contents": CONTENTS}))["totalTokens"] > 0

    pid = host.ping()["pid"]
    asyncio.run(scenario(host))
    assert host.ping()["pid"] == pid  # none of that stopped the host


def test_max_batch_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUNERY_SERVING_MAX_BATCH", "3")
    assert ModelHost().max_batch == 3
    monkeypatch.setenv("TUNERY_SERVING_MAX_BATCH", "0")
    with pytest.raises(ConfigError, match="TUNERY_SERVING_MAX_BATCH='0'"):
        ModelHost()


# --- the process: crashes, timeouts, the protocol ------------------------------------------------------------


def test_a_killed_host_fails_one_call_then_restarts(tmp_path):
    with ModelHost(env=CHILD_ENV, timeout=60) as model_host:
        pid = model_host.ping()["pid"]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ServingError) as caught:
            model_host.ping()
        assert http_status(caught.value) == 503 and "exited" in str(caught.value)
        assert model_host.ping()["pid"] not in (pid, None)


def test_a_host_that_dies_fails_the_calls_in_flight_then_restarts(tiny_model):
    model, results = str(tiny_model), []
    with ModelHost(env=CHILD_ENV, timeout=60) as model_host:
        model_host.generate(model, _body("warm up", maxOutputTokens=2))
        threads = [threading.Thread(target=lambda: results.append(_outcome(model_host, model, _long()))) for _ in "ab"]
        for thread in threads:
            thread.start()
        _running(model_host, 2)
        pid = model_host.pid
        os.kill(pid, signal.SIGKILL)
        for thread in threads:
            thread.join(30)
        assert [r[0] for r in results] == ["ServingError"] * 2 and all("exited" in r[1] for r in results)
        assert model_host.generate(model, REQUEST)["candidates"] and model_host.pid != pid


def test_a_stopped_host_fails_its_calls_with_504_and_the_next_call_gets_a_fresh_one(tiny_model):
    model, results = str(tiny_model), []
    with ModelHost(env=CHILD_ENV, timeout=120, probe_timeout=1) as model_host:
        model_host.generate(model, REQUEST)
        model_host.timeout, pid = 2, model_host.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            threads = [
                threading.Thread(target=lambda: results.append(_outcome(model_host, model, REQUEST))) for _ in "ab"
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            deadline = time.monotonic() + 10
            while model_host.pid == pid and time.monotonic() < deadline:  # the ping probe finds it stuck, kills it
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        assert [r[0] for r in results] == ["ServingError"] * 2
        assert all("did not answer" in r[1] or "stopped answering" in r[1] for r in results), results
        assert model_host.pid is None
        model_host.timeout = 60
        assert model_host.generate(model, REQUEST)["candidates"] and model_host.pid not in (pid, None)


def test_the_protocol_is_one_json_line_per_request_and_eof_ends_the_host():
    lines = [
        json.dumps({"id": 1, "op": "ping"}),
        "not json",
        json.dumps({"id": 3, "op": "nope"}),
        json.dumps({"id": 4, "op": "countTokens", "model": "nowhere", "request": {}}),
        json.dumps({"id": 5, "op": "cancel", "target": 99}),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "tunery.serving.host"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env={**os.environ, **CHILD_ENV},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    replies = {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}  # by id, in any order
    assert {i: r["ok"] for i, r in replies.items()} == {1: True, None: False, 3: False, 4: False, 5: True}
    assert [replies[i]["error"]["code"] for i in (None, 3, 4)] == [500, 500, 404]
    assert replies[5]["result"] == {"cancelled": False}
    assert "JSONDecodeError" in replies[None]["error"]["message"] and "Traceback" in done.stderr


def test_stray_prints_in_the_host_go_to_stderr():
    code = (
        "from tunery.serving.host import _claim_stdout\n"
        "r = _claim_stdout()\nprint('noise')\nr.write('reply\\n')\nr.flush()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.stdout, done.stderr) == ("reply\n", "noise\n")


def test_the_client_and_the_gemini_shapes_import_no_torch():
    code = (
        "import sys, tunery.serving.process, tunery.serving.gemini, tunery.serving.host, tunery.serving; "
        "tunery.serving.ModelHost; tunery.serving.GenerationConfig; "
        "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --- request parsing and responses (no process) -----------------------------------------------------------


def test_parse_generate_request_lists_every_problem_at_once():
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "bot", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": []},
        ],
        "systemInstruction": 3,
        "generationConfig": {
            "temperature": 5,
            "topP": 0,
            "candidateCount": 2,
            "stopSequences": ["ok", ""],
            "responseMimeType": "text/plain",
        },
        "tools": [],
    }
    with pytest.raises(DatasetError) as caught:
        parse_generate_request(body)
    problems = {p.field: p.message for p in caught.value.problems}
    assert set(problems) == {
        "systemInstruction.parts",
        "contents[1].role",
        "contents[2].parts",
        "generationConfig.temperature",
        "generationConfig.topP",
        "generationConfig.candidateCount",
        "generationConfig.stopSequences[1]",
    }
    assert problems["generationConfig.temperature"] == "expected 0 to 2, got 5.0"
    assert str(caught.value).splitlines()[0] == "invalid generateContent request: 7 problems"
    assert "contents[1].role: unknown role 'bot'" in str(caught.value)


def test_parse_generate_request_reads_the_gemini_shape():
    example, config = parse_generate_request(
        {
            "contents": [
                {"parts": [{"text": "hi"}]},  # no role: the user's
                {"role": "model", "parts": [{"text": "hello"}]},
                {"role": "user", "parts": [{"text": "card"}, {"text": " declined"}]},
            ],
            "systemInstruction": "Route the ticket.",
            "generationConfig": {"maxOutputTokens": 7, "temperature": 0.5, "topK": 4.0, "stopSequences": ["\n"]},
        }
    )
    assert [t.role for t in example.turns] == ["user", "model", "user"] and example.turns[-1].text == "card declined"
    assert example.system == "Route the ticket."
    assert (config.max_output_tokens, config.temperature, config.top_k, config.stop_sequences) == (7, 0.5, 4, ("\n",))
    with pytest.raises(DatasetError, match=r"contents\[1\].role: the last turn must be the user's"):
        parse_generate_request({"contents": CONTENTS + [{"role": "model", "parts": [{"text": "x"}]}]})
    with pytest.raises(DatasetError, match="request: expected a JSON object, got a list"):
        parse_generate_request([])


def test_parse_count_tokens_request_takes_contents_or_a_generate_request():
    plain = parse_count_tokens_request({"contents": CONTENTS, "systemInstruction": "Route the ticket."})
    assert parse_count_tokens_request({"generateContentRequest": REQUEST}) == plain
    with pytest.raises(DatasetError) as caught:
        parse_count_tokens_request(
            {"contents": CONTENTS, "generateContentRequest": {"contents": [], "generationConfig": {"topK": -1}}}
        )
    assert {p.field for p in caught.value.problems} == {
        "generateContentRequest",
        "generateContentRequest.contents",
        "generateContentRequest.generationConfig.topK",
    }


def test_generation_config_accepts_both_spellings_and_keeps_the_engine_checks():
    assert generation_config({"max_output_tokens": 3, "topP": 0.5}) == generation_config(
        {"maxOutputTokens": 3, "top_p": 0.5}
    )
    assert generation_config(None) == generation_config({})
    with pytest.raises(DatasetError, match="generation_config.seed: expected an integer, got a string"):
        generation_config({"seed": "1"}, "generation_config")
    from tunery.serving.gemini import GenerationConfig

    with pytest.raises(ModelError, match="topK -1"):
        GenerationConfig(top_k=-1)


def test_response_shapes():
    response = generate_response(Generation("card_arrival", "STOP", 12, 3, 45.678), "tuned-1")
    assert response == {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "card_arrival"}]}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3, "totalTokenCount": 15},
        "modelVersion": "tuned-1",
        "latencyMs": 45.7,
    }
    assert count_tokens_response(9) == {"totalTokens": 9}
