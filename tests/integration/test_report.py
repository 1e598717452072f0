"""The comparison report on the real default model: base model with a zero-shot and a few-shot prompt vs a
briefly tuned model, on a few held-out tickets; the HTML opens in headless Chromium with its plots rendered.

    .venv/bin/python -m pytest tests/integration/test_report.py -q
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunery.cli import app
from tunery.demo import dataset_paths, label_set, zero_shot_prompt
from tunery.evaluation import load_evaluation
from tunery.tuning import TuningSpec, tune

pytestmark = pytest.mark.integration

EXAMPLES = 6
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,2000",
]


def head(path: Path, n: int, out: Path) -> Path:
    out.write_text("\n".join(path.read_text().splitlines()[:n]) + "\n")
    return out


def write_prompts(directory: Path, train: Path) -> tuple[Path, Path]:
    zero = zero_shot_prompt(label_set())
    base = {"system": zero.system, "template": zero.template}
    zero_path, few_path = directory / "zero-shot.yaml", directory / "few-shot.yaml"
    zero_path.write_text(yaml.safe_dump({"name": "zero-shot", **base}))
    few_path.write_text(yaml.safe_dump({"name": "few-shot", **base, "shots": 4, "shots_file": str(train)}))
    return zero_path, few_path


def screenshot(html: Path, png: Path, profile: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the report was not rendered")
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", html.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert png.is_file(), result.stderr[-2000:]


def test_compare_report_renders_in_chromium_with_its_plots(tmp_path):
    import matplotlib.image
    import numpy as np

    train_path, test_path = dataset_paths()
    train = head(train_path, 24, tmp_path / "train.jsonl")
    validation = head(test_path, EXAMPLES, tmp_path / "validation.jsonl")
    tuned = tune(TuningSpec(train=str(train), validation=str(validation), epochs=2, output=str(tmp_path / "tuned")))
    stored = load_evaluation(tuned)  # tuning evaluated the finished model on its validation file
    assert stored is not None and len(stored.predictions) == EXAMPLES and stored.task.kind == "classification"

    zero, few = write_prompts(tmp_path, train)
    out = tmp_path / "report"
    args = ["compare", "--data", validation, "--output", out]  # perturbations: tests/unit/test_evaluation.py
    args += ["--candidate", f"base zero-shot=smollm2-135m-instruct:{zero}"]
    args += ["--candidate", f"base few-shot=smollm2-135m-instruct:{few}", "--candidate", f"tuned={tuned}"]
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "base few-shot" in result.output and "accuracy" in result.output

    summary = json.loads((out / "comparison.json").read_text())
    candidates = {c["candidate"]["name"]: c for c in summary["candidates"]}
    assert set(candidates) == {"base zero-shot", "base few-shot", "tuned"}
    tokens = {name: c["metrics"]["prompt_tokens_mean"] for name, c in candidates.items()}
    assert tokens["tuned"] < tokens["base zero-shot"] < tokens["base few-shot"]
    assert all(c["metrics"]["examples"] == EXAMPLES for c in candidates.values())
    assert summary["dataAdvice"]["coverage"]["prompts"] == EXAMPLES  # the tuned model's training file, found
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5  # overview, loss curves, F1 bars, confusion, calibration
    assert "](plots/loss-curves.png)" in (out / "report.md").read_text()

    png = tmp_path / "report.png"
    screenshot(out / "report.html", png, tmp_path / "chromium-profile")
    pixels = matplotlib.image.imread(str(png))[..., :3]
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"{len(colours)} colours: the page looks blank"
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.02  # ink on at least 2% of the page
    print(f"report: {out / 'report.html'}\nscreenshot: {png}")
