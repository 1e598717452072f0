"""How an upload's dataset check scales with the file's size: time, rate, and the checker's peak memory; and one
big upload through a real server.

    PYTHONPATH=. .venv/bin/python benchmarks/upload_check.py --sizes 1,4,16,64 [--model smollm2-135m-instruct]
    PYTHONPATH=. .venv/bin/python benchmarks/upload_check.py --sizes 1 --server 200

Each size is a valid JSONL (the test fixture's classification lines repeated) checked by a fresh checker process
(``ModelHost.validate``, what ``POST /v1/files`` runs, without a time bound), with the default model's tokenizer.
The baseline is the smallest size: the table shows each size's rate and peak memory beside it (linear time keeps
the rate; memory flat in the size keeps the peak). Peak memory is the checker's ``VmHWM`` after the check (its
startup included).

``--server MiB``: a ``tunery serve`` with its defaults (``TUNERY_UPLOAD_CHECK_SECONDS`` 600, so the check reads
for 480 s) takes an upload of that size; the table gives its status, time, the lines and bytes checked, and the
peak resident memory of the server and of the upload's checker (sampled every 0.5 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from tunery.hardware import cpu_kind
from tunery.serving.process import ModelHost

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "classify_gemini.jsonl"
MIB = 2**20


def write(path: Path, size: int) -> int:
    """A valid dataset of at least ``size`` bytes; its line count."""
    lines = FIXTURE.read_bytes()
    count = size // len(lines) + 1
    with path.open("wb") as fh:
        for _ in range(count):
            fh.write(lines)
    return count * lines.count(b"\n")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(model: str, size_mib: float, folder: Path) -> dict:
    path = folder / f"{size_mib:g}.jsonl"
    lines = write(path, int(size_mib * MIB))
    host = ModelHost(timeout=3600)
    try:
        host.ping()  # started, so the time below is the check's own
        idle = peak_rss_mib(host.pid or 0)
        started = time.perf_counter()
        report = host.validate(path, model, 2048, 16)
        seconds = time.perf_counter() - started
        peak = peak_rss_mib(host.pid or 0)
    finally:
        host.close()
        path.unlink()
    assert report["exampleCount"] == lines and not report["problems"], report["problems"][:3]
    return {"mib": size_mib, "lines": lines, "s": seconds, "idle": idle, "peak": peak}


def through_server(size_mib: float, folder: Path) -> dict:
    """Upload a valid file of ``size_mib`` to a fresh ``tunery serve`` (defaults; this machine's converted models)."""
    path = folder / "upload.jsonl"
    lines = write(path, int(size_mib * MIB))
    home = folder / "home"
    home.mkdir()
    models = Path.home() / ".tunery" / "models"
    if models.is_dir():
        (home / "models").symlink_to(models)
    env = {**os.environ, "TUNERY_HOME": str(home)}
    command = [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", "0"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    url = ""
    for line in server.stdout:
        if line.startswith("tunery serving on "):
            url = line.removeprefix("tunery serving on ").strip()
            break
    threading.Thread(target=server.stdout.read, daemon=True).start()  # keep its pipe drained
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the warm model host and shared checker are up: not counted as the upload's
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        if health.get("modelHost") == "ready" and health.get("checker") == "ready":
            break
        time.sleep(1)
    peaks = {"server": 0.0, "checker": 0.0}
    done = threading.Event()
    root = psutil.Process(server.pid)
    before = {child.pid for child in root.children(recursive=True)}  # the warm model host and shared checker

    def sample() -> None:
        while not done.wait(0.5):
            try:
                peaks["server"] = max(peaks["server"], root.memory_info().rss / MIB)
                for child in root.children(recursive=True):  # the upload's own checker
                    if child.pid not in before and "tunery.serving.host" in " ".join(child.cmdline()):
                        peaks["checker"] = max(peaks["checker"], child.memory_info().rss / MIB)
            except psutil.Error:
                continue

    threading.Thread(target=sample, daemon=True).start()
    try:
        started = time.perf_counter()
        with path.open("rb") as fh:
            response = httpx.post(f"{url}/v1/files", files={"file": ("big.jsonl", fh)}, timeout=1200)
        seconds = time.perf_counter() - started
    finally:
        done.set()
        server.terminate()
        server.wait(30)
    body = response.json()
    partial = body.get("partialCheck") or {}
    return {
        "mib": size_mib,
        "lines": lines,
        "status": response.status_code,
        "s": seconds,
        "checked": partial.get("checkedLines", body.get("exampleCount")),
        "checked_mib": partial.get("checkedBytes", path.stat().st_size) / MIB,
        "message": partial.get("message") or body.get("error", {}).get("message", ""),
        **peaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,4,16", help="file sizes in MiB, comma-separated")
    parser.add_argument("--server", type=float, help="also upload a file of this many MiB to a real server")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(args.model, size, Path(tmp)) for size in sizes]
        served = through_server(args.server, Path(tmp)) if args.server else None
    base = rows[0]
    print(f"upload check, model {args.model}, CPU {cpu_kind()}")
    print(f"{'MiB':>6} {'lines':>9} {'seconds':>8} {'MiB/s':>6} {'vs base':>8} {'peak MiB':>9} {'+MiB per MiB':>13}")
    for row in rows:
        rate = row["mib"] / row["s"]
        growth = (row["peak"] - base["peak"]) / (row["mib"] - base["mib"]) if row is not base else 0.0
        ratio = rate / (base["mib"] / base["s"])
        print(
            f"{row['mib']:>6g} {row['lines']:>9} {row['s']:>8.1f} {rate:>6.2f} {ratio:>7.2f}x "
            f"{row['peak']:>9.0f} {growth:>13.1f}"
        )
    if served:
        print(f"\nPOST /v1/files, {served['mib']:g} MiB ({served['lines']} lines), tunery serve with its defaults:")
        print("| status | seconds | lines checked | MiB checked | server peak MiB | checker peak MiB |")
        print("|---|---|---|---|---|---|")
        print(
            f"| {served['status']} | {served['s']:.0f} | {served['checked']} | {served['checked_mib']:.1f} "
            f"| {served['server']:.0f} | {served['checker']:.0f} |"
        )
        print(served["message"])


if __name__ == "__main__":
    main()
