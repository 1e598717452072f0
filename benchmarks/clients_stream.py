"""Streamed chat completions through the official openai client, against the non-streamed call, same run.

    .venv/bin/python benchmarks/clients_stream.py                      # 8 requests each, 64 tokens, default model
    .venv/bin/python benchmarks/clients_stream.py --requests 20 --max-tokens 128

Starts a real ``tunery serve`` (a temporary home sharing the converted-model cache, as
``benchmarks/service_latency.py`` does), warms the default model with one request, then sends the same
greedy prompts one at a time with ``OpenAI(base_url=URL + "/v1").chat.completions.create``: first without
``stream`` (the baseline: the answer arrives whole), then with ``stream=True`` and
``stream_options.include_usage``. Time to first token is the time to the first chunk carrying text; tokens/s
is completion tokens over the request's wall time. It also checks that the joined stream equals the
non-streamed answer for each prompt. How much earlier the first token comes depends on the model host
streaming token by token (``ModelHost.astream``); with a host that sends the whole answer as one chunk, time
to first token equals the total.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_latency import PROMPTS, percentile, start_server  # noqa: E402

from tunery.models.catalog import DEFAULT_MODEL  # noqa: E402
from tunery.settings import models_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per mode")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    from openai import OpenAI

    home = Path(tempfile.mkdtemp(prefix="tunery-bench-home-"))
    cache = models_cache()
    cache.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(cache)
    created = subprocess.run(
        [sys.executable, "-m", "tunery", "keys", "create", "--tenant", "bench"],
        env={**os.environ, "TUNERY_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]  # the openai client always sends a key
    server, url = start_server(home)
    try:
        client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=600)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]

        def ask(prompt: str, **extra):
            return client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                max_tokens=args.max_tokens,
                **extra,
            )

        ask(prompts[0])  # warm-up: loads the model in the host
        whole: list[tuple[float, int, str]] = []
        for prompt in prompts:
            started = time.perf_counter()
            answer = ask(prompt)
            whole.append(
                (time.perf_counter() - started, answer.usage.completion_tokens, answer.choices[0].message.content)
            )
        streamed: list[tuple[float, float, int, str, int]] = []
        for prompt in prompts:
            started, first, texts, tokens, chunks = time.perf_counter(), None, [], 0, 0
            for chunk in ask(prompt, stream=True, stream_options={"include_usage": True}):
                chunks += 1
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first if first is not None else time.perf_counter() - started
                    texts.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            total = time.perf_counter() - started
            streamed.append((first if first is not None else total, total, tokens, "".join(texts), chunks))
    finally:
        server.terminate()
        server.wait(60)

    same = sum(w[2] == s[3] for w, s in zip(whole, streamed))
    rows = [
        ("non-streamed (baseline)", [w[0] for w in whole], [w[0] for w in whole], [w[1] / w[0] for w in whole]),
        ("stream=True", [s[0] for s in streamed], [s[1] for s in streamed], [s[2] / s[1] for s in streamed]),
    ]
    print(f"model {args.model}, {args.requests} greedy requests per mode, max_tokens {args.max_tokens}, one at a time")
    print(f"{'mode':<26}{'first token p50 ms':>20}{'p95 ms':>10}{'total p50 ms':>14}{'tokens/s p50':>14}")
    for name, first, total, rate in rows:
        print(
            f"{name:<26}{percentile(first, 0.5) * 1000:>20.0f}{percentile(first, 0.95) * 1000:>10.0f}"
            f"{percentile(total, 0.5) * 1000:>14.0f}{statistics.median(rate):>14.1f}"
        )
    ratio = percentile(rows[1][1], 0.5) / percentile(rows[0][1], 0.5)
    print(f"time to first token, streamed / non-streamed: {ratio:.2f}x (p50)")
    print(f"chunks per streamed answer: median {statistics.median(s[4] for s in streamed):.0f}")
    print(f"joined stream equals the non-streamed answer: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
