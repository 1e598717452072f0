"""generateContent throughput with several callers at once: the model host's batching against none.

    python benchmarks/generate_batching.py                 # 8 callers, 3 requests each, maxOutputTokens 48
    python benchmarks/generate_batching.py --callers 16 --requests 2 --max-output-tokens 64

Two ``ModelHost``s run side by side in this process, each with its own host subprocess and the
default model: one with ``max_batch=1`` (one row decodes at a time, the others wait), one with the
default (``$TUNERY_SERVING_MAX_BATCH`` rows decode together, joining and leaving the running batch).
The API's ``:generateContent`` calls the same
``ModelHost.generate``, one thread per request. ``--callers`` threads each send ``--requests``
greedy requests at once; the table gives each request's latency, the wall time for all of them
and output tokens per second of wall time, and checks that both hosts gave every request the
same answer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tunery.models.catalog import DEFAULT_MODEL
from tunery.serving.process import DEFAULT_MAX_BATCH, ModelHost

PROMPTS = [
    "My card never arrived and it has been two weeks.",
    "Why was my transfer to my landlord declined?",
    "I was charged twice for the same coffee this morning.",
    "How do I change the PIN on my debit card?",
    "The exchange rate on my payment looks wrong.",
    "Can I get a refund for a subscription I cancelled last month?",
    "My top-up by bank transfer has not arrived yet.",
    "Which countries can I send money to from this app?",
]


def body(prompt: str, max_output_tokens: int) -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"maxOutputTokens": max_output_tokens},
    }


def run(host: ModelHost, callers: int, requests: int, max_output_tokens: int) -> dict[str, Any]:
    """Every caller's requests at once; their latencies (ms), answers, output tokens and the wall time (s)."""
    host.generate(DEFAULT_MODEL, body("Hello", 4))  # loads the model

    def one(i: int) -> tuple[float, str, int]:
        started = time.perf_counter()
        reply = host.generate(DEFAULT_MODEL, body(PROMPTS[i % len(PROMPTS)], max_output_tokens))
        elapsed = (time.perf_counter() - started) * 1000
        candidate = reply["candidates"][0]
        return elapsed, candidate["content"]["parts"][0]["text"], reply["usageMetadata"]["candidatesTokenCount"]

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(one, range(callers * requests)))
    wall = time.perf_counter() - started
    return {
        "latencies": [r[0] for r in results],
        "answers": [r[1] for r in results],
        "tokens": sum(r[2] for r in results),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per caller")
    parser.add_argument("--max-output-tokens", type=int, default=48)
    args = parser.parse_args()

    found = {}
    for name, max_batch in (("one at a time (max_batch=1)", 1), (f"batched (max_batch={DEFAULT_MAX_BATCH})", None)):
        with ModelHost(max_batch=max_batch) as host:
            found[name] = run(host, args.callers, args.requests, args.max_output_tokens)
    (base_name, base), (_, batched) = found.items()
    n = args.callers * args.requests
    print(f"\n{DEFAULT_MODEL}: {args.callers} callers x {args.requests} greedy requests, ", end="")
    print(f"maxOutputTokens {args.max_output_tokens}, host and callers on this machine\n")
    print(f"{'host':30} {'requests':>8} {'p50 ms':>9} {'p99 ms':>9} {'wall s':>8} {'out tokens':>10} {'tokens/s':>9}")
    for name, r in found.items():
        lat = sorted(r["latencies"])
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        print(
            f"{name:30} {n:8d} {statistics.median(lat):9.1f} {p99:9.1f} {r['wall']:8.2f} {r['tokens']:10d} "
            f"{r['tokens'] / r['wall']:9.1f}"
        )
    same = sum(a == b for a, b in zip(base["answers"], batched["answers"], strict=True))
    speedup = (batched["tokens"] / batched["wall"]) / (base["tokens"] / base["wall"])
    latency = statistics.median(batched["latencies"]) / statistics.median(base["latencies"])
    print(f"\ntokens/s, batched / {base_name}: {speedup:.2f}x")
    print(f"p50 latency, batched / one at a time: {latency:.2f}x")
    print(f"same answer from both hosts: {same} of {n}")


if __name__ == "__main__":
    main()
