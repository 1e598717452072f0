"""Service latency under load, against a real ``tunery serve`` on this machine.

    python benchmarks/service_latency.py                       # 32 clients, 20 requests each per operation
    python benchmarks/service_latency.py --clients 8 --requests 50 --generate 5

Starts a server (SQLite job store in a temporary home that shares the converted-model cache,
``--workers 1``), uploads the demo training file, then times each operation with ``--clients``
concurrent clients (threads, one HTTP connection each), all clients on this same machine:

- ``GET /healthz``: the floor of the HTTP stack; the other rows are also shown as a ratio to it;
- ``POST /v1/tuningJobs`` (each job is cancelled at once, untimed, so training does not compete);
- ``GET /v1/tuningJobs/{id}`` and ``GET /v1/tuningJobs?pageSize=50``.

Then ``:generateContent`` on the default model, one request at a time (a warm-up request loads the
model first), against the same requests run in this process by ``tunery.serving.Engine``: the
difference is what the HTTP hop and the model host subprocess cost. tokens/s is output tokens per
second of a request's wall time.

Then ``POST /v1/files`` (the demo training file, checked and counted) on an idle server against the
same upload sent while a ``--busy-tokens`` generation runs: uploads are checked in a host process of
their own, so they should not wait for the generation to end.

Last, the flood (``--flood-only`` runs just this part), on a second server with two tenants' keys: a
process of its own polls ``GET /healthz`` (and tenant B's job list) every 20 ms while the server is idle
(the baseline), while tenant A sends ``--flood`` concurrent ``:generateContent`` calls (maxOutputTokens
``--flood-tokens``) and tenant B one, and while the same flood meets a model host stopped with SIGSTOP
for ``--stopped-seconds`` (then SIGCONT). The table shows healthz p50/p99 in each phase and how many flood
calls were answered (200) or refused (429 with Retry-After), and anything else (there should be none).

    python benchmarks/service_latency.py --flood-only --flood 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tunery.models.catalog import DEFAULT_MODEL
from tunery.settings import models_cache

READY = "tunery serving on "
PROMPTS = [
    "My card never arrived and it has been two weeks.",
    "Why was my transfer to my landlord declined?",
    "I was charged twice for the same coffee this morning.",
    "How do I change the PIN on my debit card?",
    "The exchange rate on my payment looks wrong.",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "TUNERY_HOME": str(home)}
    env.pop("TUNERY_DATABASE_URL", None)
    command = [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(READY):
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep draining its output
            return process, line[len(READY) :].strip()
    raise RuntimeError("tunery serve did not start")


def under_load(url: str, clients: int, requests: int, call: Callable[[httpx.Client, int], None]) -> list[float]:
    """Latencies (ms) of ``clients × requests`` calls, ``clients`` at a time."""

    def client_run(index: int) -> list[float]:
        times = []
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(requests):
                started = time.perf_counter()
                call(client, index * requests + i)
                times.append((time.perf_counter() - started) * 1000)
        return times

    with ThreadPoolExecutor(clients) as pool:
        return [t for times in pool.map(client_run, range(clients)) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client per operation")
    parser.add_argument("--generate", type=int, default=10, help="generateContent requests")
    parser.add_argument("--max-output-tokens", type=int, default=64)
    parser.add_argument("--uploads", type=int, default=5, help="uploads idle and during a generation")
    parser.add_argument("--busy-tokens", type=int, default=128, help="maxOutputTokens of the generation")
    parser.add_argument("--flood", type=int, default=64, help="concurrent generateContent calls from one tenant")
    parser.add_argument("--flood-tokens", type=int, default=48, help="maxOutputTokens of each flood call")
    parser.add_argument("--stopped-seconds", type=float, default=35.0, help="how long the host stays stopped")
    parser.add_argument("--flood-only", action="store_true", help="run only the flood part")
    args = parser.parse_args()
    if args.flood_only:
        flood_run(args)
        return

    from tunery.demo import dataset_paths

    home = Path(tempfile.mkdtemp(prefix="tunery-bench-home-"))
    cache = models_cache()
    cache.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(cache)  # share the converted default model; everything else is new
    server, url = start_server(home)
    rows: list[tuple[str, list[float]]] = []
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            train = dataset_paths()[0]
            with train.open("rb") as fh:
                uploaded = client.post("/v1/files", files={"file": (train.name, fh, "application/jsonl")})
            uploaded.raise_for_status()
            file_name = uploaded.json()["name"]
            body = {
                "baseModel": DEFAULT_MODEL,
                "supervisedTuningSpec": {"trainingDatasetUri": file_name, "hyperParameters": {"epochCount": 1}},
            }
            names: list[str] = []

            def create(c: httpx.Client, _: int) -> None:
                response = c.post("/v1/tuningJobs", json=body)
                response.raise_for_status()
                names.append(response.json()["name"])

            def cancel_all() -> None:
                for name in names:
                    client.post(f"/v1/{name}:cancel").raise_for_status()

            rows.append(("GET /healthz", under_load(url, args.clients, args.requests, lambda c, _: c.get("/healthz"))))
            created = under_load(url, args.clients, args.requests, create)
            cancel_all()
            rows.append(("POST /v1/tuningJobs", created))
            rows.append(
                (
                    "GET /v1/tuningJobs/{id}",
                    under_load(
                        url,
                        args.clients,
                        args.requests,
                        lambda c, i: c.get(f"/v1/{random.choice(names)}").raise_for_status(),
                    ),
                )
            )
            rows.append(
                (
                    "GET /v1/tuningJobs?pageSize=50",
                    under_load(
                        url,
                        args.clients,
                        args.requests,
                        lambda c, _: c.get("/v1/tuningJobs", params={"pageSize": 50}).raise_for_status(),
                    ),
                )
            )
            http_gen = generate_over_http(client, args.generate, args.max_output_tokens)
            uploads = uploads_idle_and_busy(client, url, train, args.uploads, args.busy_tokens)
    finally:
        server.terminate()
        server.wait(60)
    local_gen = generate_in_process(args.generate, args.max_output_tokens)

    floor = statistics.median(rows[0][1])
    print(f"\n{args.clients} concurrent clients, {args.requests} requests each; server and clients on this machine\n")
    print(f"{'operation':34} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50 / healthz':>14}")
    for name, times in rows:
        p50 = statistics.median(times)
        print(f"{name:34} {len(times):8d} {p50:8.1f} {percentile(times, 0.99):8.1f} {p50 / floor:13.1f}x")
    print(f"\ngenerateContent on {DEFAULT_MODEL}, maxOutputTokens {args.max_output_tokens}, one at a time\n")
    print(f"{'path':34} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'tokens/s':>9} {'out tokens':>10}")
    for name, (times, tokens) in (("HTTP :generateContent", http_gen), ("in process (Engine.generate)", local_gen)):
        rate = sum(tokens) / (sum(times) / 1000)
        print(
            f"{name:34} {len(times):8d} {statistics.median(times):8.1f} {percentile(times, 0.99):8.1f} "
            f"{rate:9.1f} {sum(tokens):10d}"
        )
    overhead = statistics.median(http_gen[0]) / statistics.median(local_gen[0])
    print(f"\nHTTP p50 / in-process p50: {overhead:.2f}x")
    print(f"\nPOST /v1/files ({train.name}), idle and while a {args.busy_tokens}-token generation runs\n")
    print(f"{'server':34} {'requests':>8} {'p50 ms':>8} {'max ms':>8} {'generation ms':>14}")
    for name, (times, generations) in zip(("idle", "generating"), uploads, strict=True):
        busy = f"{statistics.median(generations):14.1f}" if generations else f"{'-':>14}"
        print(f"{name:34} {len(times):8d} {statistics.median(times):8.1f} {max(times):8.1f} {busy}")
    ratio = statistics.median(uploads[1][0]) / statistics.median(uploads[0][0])
    print(f"\nupload p50 generating / idle: {ratio:.2f}x")
    flood_run(args)


def request_body(prompt: str, max_output_tokens: int) -> dict:
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"maxOutputTokens": max_output_tokens},
    }


def generate_over_http(client: httpx.Client, n: int, max_output_tokens: int) -> tuple[list[float], list[int]]:
    path = f"/v1/models/{DEFAULT_MODEL}:generateContent"
    client.post(path, json=request_body("Hello", 4)).raise_for_status()  # loads the model
    times, tokens = [], []
    for i in range(n):
        started = time.perf_counter()
        response = client.post(path, json=request_body(PROMPTS[i % len(PROMPTS)], max_output_tokens))
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        tokens.append(response.json()["usageMetadata"]["candidatesTokenCount"])
    return times, tokens


def uploads_idle_and_busy(
    client: httpx.Client, url: str, train: Path, n: int, busy_tokens: int
) -> tuple[tuple[list[float], list[float]], tuple[list[float], list[float]]]:
    """Upload times (ms) on an idle server, then each during a generation (with those generations' times)."""
    content = train.read_bytes()

    def upload() -> float:
        started = time.perf_counter()
        client.post("/v1/files", files={"file": (train.name, content)}).raise_for_status()
        return (time.perf_counter() - started) * 1000

    upload()  # starts the checker
    idle = [upload() for _ in range(n)]
    busy, generations = [], []
    path = f"{url}/v1/models/{DEFAULT_MODEL}:generateContent"
    body = request_body("Write a long letter to the bank about every fee on my account.", busy_tokens)
    body["generationConfig"]["stopSequences"] = ["\u2603\u2603"]  # not in the output: run to the token limit
    with ThreadPoolExecutor(1) as pool:
        for _ in range(n):
            started = time.perf_counter()
            generation = pool.submit(httpx.post, path, json=body, timeout=600)
            time.sleep(1.0)  # the generation is running in the model host
            busy.append(upload())
            generation.result().raise_for_status()
            generations.append((time.perf_counter() - started) * 1000)
    return (idle, []), (busy, generations)


def generate_in_process(n: int, max_output_tokens: int) -> tuple[list[float], list[int]]:
    from tunery.serving.engine import Engine
    from tunery.serving.gemini import parse_generate_request

    engine = Engine(DEFAULT_MODEL)
    engine.generate(*parse_generate_request(request_body("Hello", 4)))
    times, tokens = [], []
    for i in range(n):
        example, config = parse_generate_request(request_body(PROMPTS[i % len(PROMPTS)], max_output_tokens))
        started = time.perf_counter()
        result = engine.generate(example, config)
        times.append((time.perf_counter() - started) * 1000)
        tokens.append(result.output_tokens)
    return times, tokens


POLLER = """
import json, sys, time, httpx
url, key = sys.argv[1], sys.argv[2]
healthz, reads = [], []
with httpx.Client(base_url=url, timeout=30) as client:
    print("ready", flush=True)
    i = 0
    while not sys.stdin.readline().startswith("stop"):
        started = time.perf_counter()
        client.get("/healthz").raise_for_status()
        healthz.append((time.perf_counter() - started) * 1000)
        if i % 10 == 0:
            started = time.perf_counter()
            client.get("/v1/tuningJobs", headers={"Authorization": f"Bearer {key}"}).raise_for_status()
            reads.append((time.perf_counter() - started) * 1000)
        i += 1
print(json.dumps({"healthz": healthz, "reads": reads}), flush=True)
"""


class Poller:
    """``GET /healthz`` every 20 ms (and tenant B's job list every tenth time) from a process of its own."""

    def __init__(self, url: str, key: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", POLLER, url, key], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        assert self.process.stdin is not None
        while not self.stop.is_set():
            self.process.stdin.write("poll\n")
            self.process.stdin.flush()
            self.stop.wait(0.02)

    def result(self) -> tuple[list[float], list[float]]:
        self.stop.set()
        self.thread.join()
        out, _ = self.process.communicate("stop\n", timeout=120)
        found = json.loads(out.strip().splitlines()[-1])
        return found["healthz"], found["reads"]


def model_host_pid(parent: int) -> int:
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"tunery.serving.host" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    raise RuntimeError("no model host found")


def flood_run(args: argparse.Namespace) -> None:
    """The flood table (see the module docstring), on a server of its own with tenants A and B."""
    home = Path(tempfile.mkdtemp(prefix="tunery-bench-flood-"))
    cache = models_cache()
    cache.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(cache)
    env = {**os.environ, "TUNERY_HOME": str(home)}
    env.pop("TUNERY_DATABASE_URL", None)
    keys = []
    for tenant in ("flood-a", "single-b"):
        made = subprocess.run(
            [sys.executable, "-m", "tunery", "keys", "create", "--tenant", tenant],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        keys.append(made.stdout.strip().splitlines()[-1])
    a, b = ({"Authorization": f"Bearer {key}"} for key in keys)
    server, url = start_server(home)
    path = f"/v1/models/{DEFAULT_MODEL}:generateContent"
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            client.post(path, json=request_body("Hello", 4), headers=a).raise_for_status()  # loads the model
            poller = Poller(url, keys[1])
            time.sleep(5)
            rows.append(("idle (baseline)", *poller.result(), {}, None))
            for phase in ("flood", "flood, model host stopped"):
                poller = Poller(url, keys[1])
                stopped = model_host_pid(server.pid) if "stopped" in phase else None
                if stopped:
                    os.kill(stopped, signal.SIGSTOP)
                counts, single = flood(url, path, a, b, args, stopped, args.stopped_seconds)
                rows.append((phase, *poller.result(), counts, single))
    finally:
        server.terminate()
        server.wait(60)
    floor = statistics.median(rows[0][1])
    print(
        f"\n{args.flood} concurrent generateContent calls from tenant A (maxOutputTokens {args.flood_tokens}) and one"
    )
    print(f"from tenant B, on {DEFAULT_MODEL}; healthz polled every 20 ms by a process of its own\n")
    print(
        f"{'phase':28} {'polls':>6} {'p50 ms':>7} {'p99 ms':>7} {'p50 / idle':>10} {'B reads p99':>11} "
        f"{'answered':>10} {'429':>10} {'other':>5} {'B':>4}"
    )
    for phase, healthz, reads, counts, single in rows:
        total = sum(counts.values())
        answered, refused = counts.get(200, 0), counts.get(429, 0)
        print(
            f"{phase:28} {len(healthz):6d} {statistics.median(healthz):7.1f} {percentile(healthz, 0.99):7.1f} "
            f"{statistics.median(healthz) / floor:9.1f}x {percentile(reads, 0.99):11.1f} "
            f"{share(answered, total):>10} {share(refused, total):>10} {total - answered - refused:5d} "
            f"{single or '-':>4}"
        )


def share(n: int, total: int) -> str:
    return f"{n} ({n / total:.0%})" if total else "-"


def flood(
    url: str, path: str, a: dict, b: dict, args: argparse.Namespace, stopped: int | None, stopped_seconds: float
) -> tuple[dict[int, int], int]:
    """``{status: count}`` of the flood's answers, and tenant B's single call's status."""
    limits = httpx.Limits(max_connections=args.flood + 1, max_keepalive_connections=args.flood + 1)
    with httpx.Client(base_url=url, timeout=600, limits=limits) as client, ThreadPoolExecutor(args.flood + 1) as pool:

        def call(headers: dict, i: int) -> int:
            return client.post(
                path, json=request_body(PROMPTS[i % len(PROMPTS)], args.flood_tokens), headers=headers
            ).status_code

        futures = [pool.submit(call, a, i) for i in range(args.flood)]
        time.sleep(0.3)
        single = pool.submit(call, b, 0)
        if stopped:
            time.sleep(stopped_seconds)  # past the queue's wait (30 s): those not in a slot have been refused
            os.kill(stopped, signal.SIGCONT)
        counts: dict[int, int] = {}
        for future in futures:
            status = future.result()
            counts[status] = counts.get(status, 0) + 1
        return counts, single.result()


if __name__ == "__main__":
    main()
