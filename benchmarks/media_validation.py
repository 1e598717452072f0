"""Validation of an image dataset: ``read_examples`` on 1,000 examples with one image each, against 1,000 text-only.

    python benchmarks/media_validation.py                  # 1,000 examples, no tokenizer (the checks alone)
    python benchmarks/media_validation.py --examples 5000 --model /path/to/model   # with token counting

Generates the images in a temporary folder (half PNG, half JPEG, 48x48 noise: a few KB each), a JSONL whose
examples name them by path relative to it (``fileData.fileUri``), and the same examples without the image.
Each row is read ``--repeat`` times; the table gives the best wall time, per example, and the media validation's
cost over the text baseline. Validation reads headers only (``tunery.data.media.probe``): the issue's target is
at most 10 s for 1,000 images.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from tunery.data.validation import read_examples

TARGET_SECONDS = 10.0  # #15: 1,000 images validated in at most this


def write_dataset(folder: Path, n: int, side: int = 48) -> tuple[Path, Path, int]:
    """``n`` images under ``folder/img`` and two JSONL files (with and without them); the images' total bytes."""
    rng = random.Random(0)
    (folder / "img").mkdir(parents=True)
    text_rows, image_rows, total = [], [], 0
    for i in range(n):
        fmt, ext, mime = ("PNG", "png", "image/png") if i % 2 == 0 else ("JPEG", "jpg", "image/jpeg")
        path = folder / "img" / f"{i:05d}.{ext}"
        Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(path, format=fmt)
        total += path.stat().st_size
        question = {"text": f"what is in picture {i}"}
        answer = {"role": "model", "parts": [{"text": ("noise", "static")[i % 2]}]}
        image = {"fileData": {"mimeType": mime, "fileUri": f"img/{path.name}"}}
        text_rows.append({"contents": [{"role": "user", "parts": [question]}, answer]})
        image_rows.append({"contents": [{"role": "user", "parts": [question, image]}, answer]})
    text, images = folder / "text.jsonl", folder / "images.jsonl"
    text.write_text("".join(json.dumps(r) + "\n" for r in text_rows))
    images.write_text("".join(json.dumps(r) + "\n" for r in image_rows))
    return text, images, total


def best_time(path: Path, repeat: int, options: dict[str, Any]) -> tuple[float, int]:
    """The least wall time of ``repeat`` reads, and the valid examples found (every one must be valid)."""
    times, valid = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        report = read_examples(path, **options)
        times.append(time.perf_counter() - started)
        if not report.ok:
            raise SystemExit(f"{path}: unexpected problems: {[str(p) for p in report.errors[:3]]}")
        valid = len(report.examples)
    return min(times), valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", help="A base model (catalog id or folder): also encode with its tokenizer")
    args = parser.parse_args()
    options: dict[str, Any] = {"model_id": "benchmark-vlm", "modalities": ("text", "image")}
    if args.model:
        from tunery.models.loading import load_tokenizer
        from tunery.models.sources import resolve_base

        options["tokenizer"] = load_tokenizer(resolve_base(args.model).path)
        options["max_length"] = 2048
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        text, images, total = write_dataset(Path(tmp), args.examples)
        made = time.perf_counter() - started
        each = total / args.examples
        print(f"{args.examples} images written in {made:.1f} s: {total / 1024:.0f} KiB, {each:.0f} B each")
        rows = [("text only", text), ("one image each", images)]
        results = {label: best_time(path, args.repeat, options) for label, path in rows}
    base = results["text only"][0]
    print(f"\n| examples ({args.examples}) | wall s (best of {args.repeat}) | ms per example | over text |")
    print("|---|---:|---:|---:|")
    for label, (seconds, valid) in results.items():
        assert valid == args.examples, (label, valid)
        print(f"| {label} | {seconds:.3f} | {1000 * seconds / valid:.3f} | {seconds - base:+.3f} s |")
    image_seconds = results["one image each"][0] * 1000 / args.examples
    verdict = "meets" if image_seconds <= TARGET_SECONDS else "MISSES"
    print(f"\n1,000 images validated in {image_seconds:.2f} s: {verdict} the target of {TARGET_SECONDS:g} s")


if __name__ == "__main__":
    main()
