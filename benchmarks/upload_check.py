"""How an upload's dataset check scales with the file's size: time, rate, and the checker's peak memory.

    PYTHONPATH=. .venv/bin/python benchmarks/upload_check.py --sizes 1,4,16 [--model smollm2-135m-instruct]

Each size is a valid JSONL (the test fixture's classification lines repeated) checked by a fresh checker process
(``ModelHost.validate``, what ``POST /v1/files`` runs), with the default model's tokenizer. The baseline is the
smallest size: the table shows each size's rate and peak memory beside it (linear time keeps the rate; memory flat
in the size keeps the peak). Peak memory is the checker's ``VmHWM`` after the check (its startup included).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,4,16", help="file sizes in MiB, comma-separated (200 for the limit)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(args.model, size, Path(tmp)) for size in sizes]
    base = rows[0]
    cpu = platform.processor() or "x86_64"
    print(f"upload check, model {args.model}, {os.cpu_count()} CPUs ({cpu}; AMD EPYC, AVX2 only, no AVX512-BF16/AMX)")
    print(f"{'MiB':>6} {'lines':>9} {'seconds':>8} {'MiB/s':>6} {'vs base':>8} {'peak MiB':>9} {'+MiB per MiB':>13}")
    for row in rows:
        rate = row["mib"] / row["s"]
        growth = (row["peak"] - base["peak"]) / (row["mib"] - base["mib"]) if row is not base else 0.0
        ratio = rate / (base["mib"] / base["s"])
        print(
            f"{row['mib']:>6g} {row['lines']:>9} {row['s']:>8.1f} {rate:>6.2f} {ratio:>7.2f}x "
            f"{row['peak']:>9.0f} {growth:>13.1f}"
        )


if __name__ == "__main__":
    main()
