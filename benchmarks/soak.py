"""A soak with faults: a real ``tunery serve`` under mixed traffic from 3 tenants while its processes are killed.

    PYTHONPATH=. .venv/bin/python benchmarks/soak.py --minutes 30          # as root (it mounts a tmpfs)

Traffic (each tenant a thread, one call after another, at random): small uploads, large uploads (checked in a
checker of their own: ``TUNERY_UPLOAD_OWN_CHECKER_BYTES`` is 256 KiB here), tuning jobs (SmolLM2, 10 examples,
one epoch), generateContent, streamGenerateContent, batch prediction jobs, cancels of running jobs and deletes of
tuned models. A fault injector SIGKILLs, at random times, the model host and the upload checker (twice each; their
``TUNERY_HOST_ROLE`` tells them apart) and a job worker (twice), and
fills the disk once (``TUNERY_HOME`` is a 512 MiB tmpfs, filled to ENOSPC for 20 s). ``/healthz`` is polled 5
times a second, and every process's RSS every 5 s.

Afterwards, the server is stopped with SIGTERM and the table says: the statuses every call got (each must be
one this service documents), jobs lost (created but not in the store), duplicated or stuck (not ended 10 minutes
after the traffic stops), files and processes left behind, each process's peak RSS and its slope once past its own
first minute (a model load), and /healthz p50/p99. The baseline beside the run is the first minute's /healthz.
Needs root (the tmpfs) and the converted default model under ``~/.tunery/models``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from tunery.hardware import cpu_kind

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "classify_gemini.jsonl"
MODEL = "smollm2-135m-instruct"
DOCUMENTED = {200, 201, 400, 401, 404, 409, 413, 429, 499, 503, 504, 507}
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
PROMPT = {"contents": [{"role": "user", "parts": [{"text": "my card never arrived"}]}],
          "generationConfig": {"maxOutputTokens": 16}}  # fmt: skip


class Soak:
    def __init__(self, minutes: float, root: Path, log: Path) -> None:
        self.minutes, self.root, self.log = minutes, root, log
        self.home, self.data = root / "home", root / "data"
        self.statuses: dict[str, dict[int, int]] = {}
        self.jobs: list[tuple[str, str]] = []  # (tenant, job name)
        self.models: dict[str, list[str]] = {}
        self.health: list[tuple[float, float]] = []
        self.memory: dict[str, list[tuple[float, float]]] = {}
        self.faults: list[str] = []
        self.undocumented: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    # --- the server ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.home.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(self.home)], check=True)
        (self.home / "models").symlink_to(Path.home() / ".tunery" / "models")
        self.data.mkdir()
        shutil.copy(FIXTURE, self.data / "train.jsonl")
        requests = [json.dumps({"request": PROMPT}) for _ in range(6)]
        (self.data / "requests.jsonl").write_text("\n".join(requests) + "\n")
        env = {**os.environ, "TUNERY_HOME": str(self.home), "TUNERY_DATA_ROOT": str(self.data), "OMP_NUM_THREADS": "1",
               "TUNERY_UPLOAD_OWN_CHECKER_BYTES": str(256 * 1024), "TUNERY_STORE_RETRY_SECONDS": "30"}  # fmt: skip
        self.env = env
        command = [sys.executable, "-m", "tunery", "serve", "--port", "0", "--workers", "1"]
        self.server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.server.stdout is not None
        log = self.log.open("w")
        for line in self.server.stdout:
            log.write(line)
            if line.startswith("tunery serving on "):
                self.url = line.split()[-1]
                break

        def keep_log() -> None:
            for line in self.server.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()

        threading.Thread(target=keep_log, daemon=True).start()
        self.keys = {}
        for tenant in ("a", "b", "c"):
            out = subprocess.run([sys.executable, "-m", "tunery", "keys", "create", "--tenant", tenant], env=env,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            self.keys[tenant] = out.strip().splitlines()[-1]
        time.sleep(1.5)

    def children(self, needle: str) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.server.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for proc in kids:
            try:
                if needle in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.Error:  # ended (a zombie) since the listing
                continue
        return found

    def hosts(self, role: str) -> list[psutil.Process]:
        """The model host (``host``) or the shared upload checker (``checker``): ``TUNERY_HOST_ROLE`` says which."""
        found = []
        for proc in self.children("tunery.serving.host"):
            try:
                if proc.environ().get("TUNERY_HOST_ROLE") == role:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def role(self, proc: psutil.Process) -> str:
        try:
            if "serving.host" in " ".join(proc.cmdline()):
                return proc.environ().get("TUNERY_HOST_ROLE", "batch host")  # a batch job's worker started it
            return "worker" if "jobs.worker" in " ".join(proc.cmdline()) else proc.name()
        except psutil.Error:
            return "gone"

    # --- traffic ------------------------------------------------------------------------------------------------

    def record(self, op: str, status: int) -> None:
        with self.lock:
            self.statuses.setdefault(op, {}).setdefault(status, 0)
            self.statuses[op][status] += 1

    def tenant(self, name: str) -> None:
        def keep_undocumented(response: httpx.Response) -> None:
            if response.status_code not in DOCUMENTED:
                response.read()
                with self.lock:
                    self.undocumented.append(f"{response.request.method} {response.request.url.path} "
                                             f"{response.status_code}: {response.text[:300]}")  # fmt: skip

        client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.keys[name]}"}, timeout=700,
                              event_hooks={"response": [keep_undocumented]})  # fmt: skip
        rng = random.Random(name)
        ops = [self.upload_small, self.upload_large, self.tune, self.generate, self.stream, self.batch, self.cancel,
               self.delete]  # fmt: skip
        weights = [4, 1, 1, 6, 4, 1, 1, 1]
        while not self.stop.is_set():
            op = rng.choices(ops, weights)[0]
            try:
                op(client, name)
            except httpx.HTTPError as exc:
                self.record(op.__name__, -1)
                print(f"soak: {op.__name__} for {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            time.sleep(rng.uniform(0.1, 1.0))

    def upload_small(self, client: httpx.Client, tenant: str) -> None:
        response = client.post("/v1/files", files={"file": ("s.jsonl", FIXTURE.read_bytes())})
        self.record("upload_small", response.status_code)

    def upload_large(self, client: httpx.Client, tenant: str) -> None:
        data = FIXTURE.read_bytes() * (300 * 1024 // FIXTURE.stat().st_size + 1)
        self.record("upload_large", client.post("/v1/files", files={"file": ("l.jsonl", data)}).status_code)

    def room(self, tenant: str, kind: str) -> bool:
        """Whether ``tenant`` may create another job of ``kind``: one per 10 minutes of soak each (one worker),
        spread over the run (tenant i's k-th from (k + i/3) windows in), so that jobs start all through it and
        the fault injector finds workers to kill."""
        quota = max(1, round(self.minutes / 10))
        window = self.minutes * 60 / quota
        offset = window * sorted(self.keys).index(tenant) / len(self.keys)
        due = int((time.monotonic() - self.began - offset) // window) + 1
        made = sum(1 for t, name in self.jobs if t == tenant and name.startswith(kind))
        return made < min(quota, due)

    def tune(self, client: httpx.Client, tenant: str) -> None:
        if not self.room(tenant, "tuningJobs"):
            return
        body = {"baseModel": MODEL, "supervisedTuningSpec": {"trainingDatasetUri": "train.jsonl",
                "hyperParameters": {"epochCount": 1, "batchSize": 4}}}  # fmt: skip
        response = client.post("/v1/tuningJobs", json=body)
        self.record("tune", response.status_code)
        if response.status_code in (200, 201):
            with self.lock:
                self.jobs.append((tenant, response.json()["name"]))

    def generate(self, client: httpx.Client, tenant: str) -> None:
        self.record("generate", client.post(f"/v1/models/{MODEL}:generateContent", json=PROMPT).status_code)

    def stream(self, client: httpx.Client, tenant: str) -> None:
        url = f"/v1/models/{MODEL}:streamGenerateContent"
        with client.stream("POST", url, params={"alt": "sse"}, json=PROMPT) as response:
            last = ""
            for line in response.iter_lines():
                last = line or last
        code = response.status_code
        if code == 200 and '"error"' in last:
            code = json.loads(last[6:])["error"]["code"]  # ended by an error event
        self.record("stream", code)

    def batch(self, client: httpx.Client, tenant: str) -> None:
        if not self.room(tenant, "batchPredictionJobs"):
            return
        body = {"displayName": "soak", "model": MODEL,
                "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["requests.jsonl"]}}}  # fmt: skip
        response = client.post("/v1/batchPredictionJobs", json=body)
        self.record("batch", response.status_code)
        if response.status_code == 200:
            with self.lock:
                self.jobs.append((tenant, response.json()["name"]))

    def cancel(self, client: httpx.Client, tenant: str) -> None:
        jobs = client.get("/v1/tuningJobs").json().get("tuningJobs", [])
        running = [j["name"] for j in jobs if j["state"] not in ENDED]
        if running:
            self.record("cancel", client.post(f"/v1/{random.choice(running)}:cancel").status_code)

    def delete(self, client: httpx.Client, tenant: str) -> None:
        models = [m["name"] for m in client.get("/v1/models").json()["models"] if "baseModel" in m]
        if models:
            self.record("delete", client.delete(f"/v1/{random.choice(models)}").status_code)

    # --- faults and observation ---------------------------------------------------------------------------------

    def faults_loop(self) -> None:
        rng = random.Random(7)
        seconds = self.minutes * 60
        plan = sorted([("host", rng.uniform(0.1, 0.9) * seconds) for _ in range(2)]
                      + [("checker", rng.uniform(0.1, 0.9) * seconds) for _ in range(2)]
                      + [("worker", rng.uniform(0.2, 0.8) * seconds) for _ in range(2)]
                      + [("disk", rng.uniform(0.4, 0.6) * seconds)], key=lambda x: x[1])  # fmt: skip
        started = time.monotonic()
        for kind, at in plan:
            while time.monotonic() - started < at:
                if self.stop.wait(0.5):
                    return
            if kind == "disk":
                self.fill_disk()
                continue
            victims = self.hosts(kind) if kind in ("host", "checker") else self.children("tunery.jobs.worker")
            waited = time.monotonic()
            while not victims and kind == "worker" and time.monotonic() - waited < 300 and not self.stop.is_set():
                time.sleep(1)  # no job runs now: kill the next worker that starts (within 5 minutes)
                victims = self.children("tunery.jobs.worker")
            if victims:
                victim = rng.choice(victims)
                victim.kill()
                self.faults.append(f"{time.monotonic() - started:.0f}s SIGKILL {kind} {victim.pid}")
            else:
                self.faults.append(f"{time.monotonic() - started:.0f}s no {kind} running to kill")

    def fill_disk(self) -> None:
        filler = self.home / "filler"
        with filler.open("wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 2**20)
            except OSError:
                pass
        self.faults.append(f"disk filled ({shutil.disk_usage(self.home).free // 1024} KiB free) for 20 s")
        time.sleep(20)
        filler.unlink()

    def observe(self) -> None:
        last_memory = 0.0
        client = httpx.Client(base_url=self.url, timeout=5)  # one connection: the server's time, not the client's
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                client.get("/healthz")
                self.health.append((time.monotonic(), (time.perf_counter() - started) * 1000))
            except httpx.HTTPError:
                self.health.append((time.monotonic(), 5000.0))
            if time.monotonic() - last_memory > 5:
                last_memory = time.monotonic()
                procs = [("server", psutil.Process(self.server.pid))] + [
                    (self.role(p), p) for p in psutil.Process(self.server.pid).children(recursive=True)
                ]
                for name, proc in procs:
                    try:
                        key = f"{name} {proc.pid}"
                        self.memory.setdefault(key, []).append((time.monotonic(), proc.memory_info().rss / 2**20))
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.2)

    # --- the run ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.start()
        self.began = time.monotonic()
        threads = [threading.Thread(target=self.tenant, args=(t,)) for t in self.keys]
        threads += [threading.Thread(target=self.faults_loop), threading.Thread(target=self.observe)]
        for thread in threads:
            thread.start()
        time.sleep(self.minutes * 60)
        self.stop.set()
        for thread in threads:
            thread.join()
        self.settle()

    def settle(self) -> None:
        """Wait for the jobs to end (at most 5 minutes), then stop the server and look for what is left."""
        client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 600
        states: dict[str, str] = {}
        for tenant, name in self.jobs:
            headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
            while True:
                response = client.get(f"/v1/{name}", headers=headers)
                state = response.json()["state"] if response.status_code == 200 else "LOST"
                if state in ENDED or state == "LOST" or time.monotonic() > deadline:
                    states[name] = state
                    break
                time.sleep(2)
        kids = [p.pid for p in psutil.Process(self.server.pid).children(recursive=True)]
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(60)
        time.sleep(1)
        self.left_processes = [pid for pid in kids if psutil.pid_exists(pid)
                               and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
        self.left_files = [str(p.relative_to(self.home)) for p in self.home.rglob("*.part")] + (
            ["filler"] if (self.home / "filler").exists() else [])  # fmt: skip
        self.states = states
        subprocess.run(["umount", "-l", str(self.home)], check=False)

    def report(self) -> None:
        print(f"soak: {self.minutes:g} min, 3 tenants, `tunery serve --workers 1`, {MODEL}; CPU {cpu_kind()}")
        print("\ncall            statuses (count)                              undocumented")
        for op, counts in sorted(self.statuses.items()):
            bad = sum(n for s, n in counts.items() if s not in DOCUMENTED)
            print(f"{op:<15} {json.dumps(dict(sorted(counts.items()))):<45} {bad}")
        ended = {s: list(self.states.values()).count(s) for s in set(self.states.values())}
        stuck = sum(n for s, n in ended.items() if s not in ENDED)
        duplicated = len(self.jobs) - len({name for _, name in self.jobs})
        print(f"\njobs created {len(self.jobs)}: {json.dumps(ended)}; lost {ended.get('LOST', 0)}, "
              f"duplicated {duplicated}, stuck {stuck - ended.get('LOST', 0)}")  # fmt: skip
        print(f"faults: {'; '.join(self.faults)}")
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        print(f"server log ({self.log}): {text.count('Traceback')} tracebacks")
        for line in self.undocumented:
            print(f"undocumented: {line}")
        print(f"left behind: processes {self.left_processes or 'none'}, files {self.left_files or 'none'}")
        print("\nprocess                 lived s  peak MiB  MiB after its 1st min  slope after (MiB/min)")
        for key, samples in sorted(self.memory.items()):
            born = samples[0][0]
            late = [(t, m) for t, m in samples if t >= born + 60]  # its warm-up (a model load) left out
            slope = statistics.linear_regression([t / 60 for t, _ in late], [m for _, m in late]).slope \
                if len(late) >= 6 else float("nan")  # fmt: skip
            settled = f"{late[0][1]:.0f}" if late else "-"
            lived = samples[-1][0] - born
            print(f"{key:<23} {lived:>7.0f} {max(m for _, m in samples):>9.0f} {settled:>21} {slope:>21.2f}")
        latencies = sorted(ms for _, ms in self.health)
        first = sorted(ms for t, ms in self.health if t < self.began + 60) or [0.0]

        def pct(values: list[float], q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))]

        print(f"\n/healthz: {len(latencies)} calls; whole run p50 {pct(latencies, 0.5):.1f} ms, p99 "
              f"{pct(latencies, 0.99):.1f} ms; first minute (baseline) p50 {pct(first, 0.5):.1f} ms, p99 "
              f"{pct(first, 0.99):.1f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--log", type=Path, default=Path("tunery-soak-server.log"), help="the server's output")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunery-soak-") as tmp:
        soak = Soak(args.minutes, Path(tmp), args.log.resolve())
        try:
            soak.run()
        finally:
            if soak.server.poll() is None:
                soak.server.kill()
            subprocess.run(["umount", "-l", str(soak.home)], check=False, capture_output=True)
        soak.report()


if __name__ == "__main__":
    main()
