"""Hostile input through the CLI and the API: every case a 4xx (or a problem at its line), never a 5xx or a
traceback, answered quickly, with the dataset checker's memory under its ceiling.

The corpus: JSON nested thousands deep, unbalanced brackets, 5,000-digit numbers, NaN, NUL bytes, lone
surrogates, a 50 MB line, wrong types in a tuning job, base-model folders with files that link out of the
data root. The API runs in-process with a real dataset checker (a ``ModelHost`` subprocess) on the tiny
model; the CLI runs as the ``tunery`` command.

    .venv/bin/python -m pytest tests/service/test_hostile.py -x -q
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tunery.api.app import create_app
from tunery.api.limits import ApiSettings
from tunery.cli import app as cli
from tunery.jobs.store import FAILED, Store, TunedModel, new_id, now
from tunery.serving.process import ModelHost
from tunery.settings import tunery_home

LOCAL = ("127.0.0.1", 50000)
CHECKER_CEILING = 1024 * 2**20
"""Peak resident memory of the dataset checker (and of ``tunery datasets validate``) on the whole corpus;
docs/datasets.md states it. Measured: about 400 MB for the CLI and 350 MB for the checker process, as on a
10-line file."""
GOOD = json.dumps(
    {"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "ok"}]}]}
)
HOSTILE_LINES = [
    "[" * 2000 + "]" * 2000,
    '{"contents": ' + "[" * 5000 + "]" * 5000 + "}",
    "{" * 100_000,
    '{"n": ' + "9" * 5000 + "}",
    '{"n": NaN}',
    '{"contents": "\x00"}',
    GOOD.replace("hi", "a\\u0000b").replace("ok", "\\ud800"),
    '{"\\udfff": 1}',
    GOOD.replace('"user"', "1e999999"),
    GOOD.replace('"hi"', '"' + "x" * (2**20 + 10) + '"'),  # more text than TUNERY_MAX_EXAMPLE_CHARS
]
BIG_LINE = b'{"contents": [{"role": "user", "parts": [{"text": "' + b"x" * (50 * 10**6) + b'"}]}]}'
SECRETS = ("Traceback", "RecursionError", "UnicodeEncodeError", "ValueError", "site-packages")


def corpus() -> bytes:
    """A good line, then each hostile line followed by a good one (odd lines hostile from line 2 on)."""
    lines = [GOOD]
    for line in HOSTILE_LINES:
        lines += [line, GOOD]
    return "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"


def hostile_numbers() -> list[int]:
    return [2 + 2 * i for i in range(len(HOSTILE_LINES))]


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a live process, in bytes (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def violations(response: httpx.Response) -> list[dict[str, Any]]:
    error = response.json()["error"]
    return [v for d in error.get("details", []) for v in d.get("fieldViolations", [])]


def assert_clean(response: httpx.Response, *paths: Path) -> None:
    """A 4xx in Google's error shape that shows no exception class, traceback or server path."""
    assert 400 <= response.status_code < 500, response.text[:500]
    assert response.json()["error"]["code"] == response.status_code
    for secret in (*SECRETS, *map(str, paths)):
        assert secret not in response.text, (secret, response.text[:500])


@dataclasses.dataclass
class App:
    client: TestClient
    store: Store
    settings: ApiSettings
    checker: ModelHost
    root: Path
    outside: Path

    def upload(self, content: bytes, **fields: str) -> httpx.Response:
        fields.setdefault("model", "tiny")
        return self.client.post("/v1/files", files={"file": ("train.jsonl", content)}, data=fields)

    def create(self, **body: Any) -> httpx.Response:
        body.setdefault("baseModel", "tiny")
        body.setdefault("supervisedTuningSpec", {"trainingDatasetUri": "train.jsonl"})
        return self.client.post("/v1/tuningJobs", json=body)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[App]:
    """The API with a real dataset checker; a data root holding the tiny model, a training file and two model
    folders that link out of the root (a file, a folder)."""
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "data", base / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copytree(tiny_model, root / "tiny")
    (root / "train.jsonl").write_text(f"{GOOD}\n{GOOD}\n")
    (outside / "secret.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    linked = root / "linked-file"
    shutil.copytree(tiny_model, linked)
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(outside / "secret.safetensors")
    shutil.copytree(tiny_model, root / "linked-folder")
    (root / "linked-folder" / "extra").symlink_to(outside, target_is_directory=True)
    shutil.copytree(tiny_model, root / "linked-inside")
    (root / "linked-inside" / "data.jsonl").symlink_to(root / "train.jsonl")  # inside the root: fine
    settings = ApiSettings(
        data_root=root, files_dir=base / "home" / "files", tuned_models_dir=base / "home" / "tuned", key_cache_seconds=0
    )
    store = Store(f"sqlite:///{base / 'home' / 'tunery.db'}")
    checker = ModelHost()
    client = TestClient(create_app(store=store, host=checker, checker=checker, settings=settings), client=LOCAL)
    yield App(client, store, settings, checker, root, outside)
    client.close()
    checker.close()
    store.close()


# --- datasets through the API --------------------------------------------------------------------------------


def test_each_hostile_line_of_an_upload_is_a_400_at_its_line(app: App) -> None:
    assert app.upload(f"{GOOD}\n".encode()).status_code == 201  # starts the checker
    started = time.monotonic()
    response = app.upload(corpus())
    elapsed = time.monotonic() - started
    assert_clean(response, app.root, tunery_home())
    lines = [v.get("line") for v in violations(response)]
    assert lines == hostile_numbers(), violations(response)
    assert elapsed < 20, elapsed
    descriptions = " | ".join(v["description"] for v in violations(response))
    for expected in ("nested more than 64 deep", "5000 digits", "NaN is not JSON", "lone surrogate U+D800"):
        assert expected in descriptions


def test_a_50_mb_line_is_a_400_at_its_line_quickly_and_the_checker_stays_small(app: App) -> None:
    started = time.monotonic()
    response = app.upload(GOOD.encode() + b"\n" + BIG_LINE + b"\n" + GOOD.encode() + b"\n")
    elapsed = time.monotonic() - started
    assert_clean(response)
    assert [(v["line"], v["field"]) for v in violations(response)] == [(2, "line")]
    assert "longer than the limit of 8388608 (TUNERY_MAX_LINE_BYTES)" in violations(response)[0]["description"]
    assert elapsed < 30, elapsed
    assert app.checker.pid is not None
    peak = vm_hwm(app.checker.pid)
    print(f"checker peak RSS after the corpus and a 50 MB line: {peak / 2**20:.0f} MiB")
    assert peak < CHECKER_CEILING, peak


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """A ``multipart/form-data`` body (boundary ``b0undary``) of ``(headers, content)`` parts, written by hand."""
    body = b"".join(
        b"--b0undary\r\n" + headers.encode() + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts
    )
    return body + b"--b0undary--\r\n"


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (
            [('Content-Disposition: form-data; name="file"; filename="' + "x" * 2**20 + '"', b"{}")],
            "header size",
        ),
        ([(f'Content-Disposition: form-data; name="f{i}"', b"x") for i in range(5000)], "too many form parts"),
        ([('Content-Disposition: form-data; name="model"', b"x" * 5000)], "form field 'model' too large"),
    ],
    ids=["long-header", "many-parts", "long-field"],
)
def test_hostile_multipart_forms_are_a_4xx(app: App, parts: list[tuple[str, bytes]], message: str) -> None:
    started = time.monotonic()
    response = app.client.post(
        "/v1/files", content=multipart(*parts), headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )
    assert_clean(response)
    assert response.status_code in (400, 413) and message in response.json()["error"]["message"], response.text[:300]
    assert time.monotonic() - started < 5
    assert not [p for p in app.settings.files_dir.iterdir() if p.name.startswith(".upload-")]  # nothing left behind


# --- tuning-job requests -------------------------------------------------------------------------------------


HP = "supervisedTuningSpec.hyperParameters"
WRONG_TYPES = [
    ({"epochCount": "3"}, f"{HP}.epochCount"),
    ({"epochCount": True}, f"{HP}.epochCount"),
    ({"epochCount": 3.0}, f"{HP}.epochCount"),
    ({"epochCount": 10**30}, f"{HP}.epochCount"),
    ({"batchSize": [8]}, f"{HP}.batchSize"),
    ({"adapterSize": True}, f"{HP}.adapterSize"),
    ({"adapterSize": 16.0}, f"{HP}.adapterSize"),
    ({"adapterSize": "16"}, f"{HP}.adapterSize"),
    ({"adapterSize": 3}, f"{HP}.adapterSize"),
    ({"learningRateMultiplier": "1"}, f"{HP}.learningRateMultiplier"),
    ({"learningRateMultiplier": False}, f"{HP}.learningRateMultiplier"),
    ({"seed": -1}, f"{HP}.seed"),
    ({"maxLength": None, "warmup": 3}, f"{HP}.warmup"),
]


@pytest.mark.parametrize(("hyper_parameters", "field"), WRONG_TYPES, ids=lambda v: str(v)[:40])
def test_wrong_types_in_a_job_are_a_400_naming_the_field(app: App, hyper_parameters: dict, field: str) -> None:
    response = app.create(
        supervisedTuningSpec={"trainingDatasetUri": "train.jsonl", "hyperParameters": hyper_parameters}
    )
    assert_clean(response)
    assert field in {v["field"] for v in violations(response)}, response.text


def test_a_hyperparameter_the_method_does_not_use_is_a_400(app: App) -> None:
    spec = {"trainingDatasetUri": "train.jsonl", "hyperParameters": {"adapterSize": 16}}
    response = app.create(tuningMode="FULL", supervisedTuningSpec=spec)
    assert_clean(response)
    assert {v["field"]: v["description"] for v in violations(response)} == {
        f"{HP}.adapterSize": "applies to PEFT_ADAPTER only, not FULL"
    }
    assert app.create(tuningMode="PEFT_ADAPTER", supervisedTuningSpec=spec).status_code == 201
    assert app.create(tuningMode="FULL").status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        b'{"labels": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"supervisedTuningSpec": {"trainingDatasetUri": "train.jsonl", "hyperParameters": {"seed": '
        + b"1" * 5000
        + b"}}}",
        b'{"supervisedTuningSpec": {"trainingDatasetUri": "\\ud800"}}',
        b'{"supervisedTuningSpec": {"trainingDatasetUri": "a\\u0000b"}}',
        b'{"tunedModelDisplayName": "\\udfff", "supervisedTuningSpec": {"trainingDatasetUri": "train.jsonl"}}',
        b'{"supervisedTuningSpec": {"trainingDatasetUri": "train.jsonl", "hyperParameters": {"seed": NaN}}}',
        b"\xff\xfe{}",
    ],
    ids=["deep", "long-number", "surrogate", "nul", "surrogate-name", "nan", "not-utf8"],
)
def test_hostile_job_bodies_are_a_400(app: App, body: bytes) -> None:
    response = app.client.post("/v1/tuningJobs", content=body, headers={"content-type": "application/json"})
    assert_clean(response)


# --- base-model folders that link out of the data root --------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "entry"), [("linked-file", "model.safetensors"), ("linked-folder", "extra")], ids=["file", "folder"]
)
def test_a_model_folder_with_a_link_out_of_the_root_is_refused(app: App, folder: str, entry: str) -> None:
    for response in (app.create(baseModel=folder), app.upload(f"{GOOD}\n".encode(), model=folder)):
        assert_clean(response, app.outside)
        found = {v["field"]: v["description"] for v in violations(response)}
        assert any(f"{entry} links outside the data root" in text for text in found.values()), found
    assert app.create(baseModel="linked-inside").status_code == 201  # a link that stays inside is fine


# --- what a client sees: public URLs, no server paths, opaque per-tenant ids ---------------------------------


def test_urls_come_from_the_public_url_not_the_host_header(app: App) -> None:
    path = app.settings.tuned_models_dir / "m1"
    path.mkdir(parents=True, exist_ok=True)
    app.store.add_tuned_model(TunedModel("m1", "default", new_id(), "mine", "tiny", "PEFT_ADAPTER", str(path), now()))
    answer = app.client.get("/v1/models/m1", headers={"Host": "evil.example:666"}).json()
    assert answer["endpoint"] == "http://testserver/v1/models/m1:generateContent"  # the bound address
    original = app.client.app.state.settings
    app.client.app.state.settings = dataclasses.replace(original, public_url="https://tunery.example.com/")
    try:
        answer = app.client.get("/v1/models/m1", headers={"Host": "evil.example"}).json()
    finally:
        app.client.app.state.settings = original
    assert answer["endpoint"] == "https://tunery.example.com/v1/models/m1:generateContent"


def test_job_errors_and_events_show_no_server_paths(app: App) -> None:
    job = app.create().json()
    job_id = job["name"].split("/")[1]
    home = tunery_home()
    message = (
        f"OSError: {app.root}/sets/a.jsonl and {home}/jobs/{job_id}/worker.log and /usr/lib/python3/secret.py failed"
    )
    app.store.update_job(job_id, state=FAILED, error={"code": 13, "message": message}, message=message)
    for response in (app.client.get(f"/v1/{job['name']}"), app.client.get(f"/v1/{job['name']}/events")):
        assert response.status_code == 200
        for secret in (str(app.root), str(home), "/usr/lib"):
            assert secret not in response.text, response.text
    shown = app.client.get(f"/v1/{job['name']}").json()["error"]["message"]
    assert shown == f"OSError: sets/a.jsonl and TUNERY_HOME/jobs/{job_id}/worker.log and …/secret.py failed"


def test_an_error_about_a_server_file_names_no_server_path(app: App) -> None:
    broken = app.root / "broken-model"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"model_type": "llama"}')
    response = app.upload(f"{GOOD}\n".encode(), model="broken-model")
    assert_clean(response, app.root, tunery_home())
    assert "broken-model" in response.json()["error"]["message"], response.text


def test_page_tokens_and_event_ids_are_opaque_and_per_tenant(app: App, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'tenants.db'}")
    client = TestClient(create_app(store=store, host=app.checker, checker=app.checker, settings=app.settings))
    keys = {tenant: {"Authorization": f"Bearer {store.create_key(tenant)}"} for tenant in ("acme", "other")}
    body = {"baseModel": "tiny", "supervisedTuningSpec": {"trainingDatasetUri": "train.jsonl"}}
    try:
        for _ in range(3):
            job = client.post("/v1/tuningJobs", json=body, headers=keys["acme"]).json()
            for step in range(5):
                store.add_event(job["name"].split("/")[1], "metrics", None, {"step": step})
        mine = [client.post("/v1/tuningJobs", json=body, headers=keys["other"]).json() for _ in range(2)]
        page = client.get("/v1/tuningJobs", params={"pageSize": 1}, headers=keys["other"]).json()
        token = page["nextPageToken"]
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        assert decoded == f"after:{page['tuningJobs'][0]['name'].split('/')[1]}"  # its own job's id, no count
        rest = client.get("/v1/tuningJobs", params={"pageToken": token}, headers=keys["other"]).json()
        assert [j["name"] for j in page["tuningJobs"] + rest["tuningJobs"]] == [mine[1]["name"], mine[0]["name"]]
        theirs = client.get("/v1/tuningJobs", params={"pageToken": token}, headers=keys["acme"])
        assert theirs.status_code == 400 and "pageToken" in theirs.text
        for forged in (b"after:nope", b"after:\x00", b"\xff\xfe", b"before:" + mine[0]["name"].split("/")[1].encode()):
            token = base64.urlsafe_b64encode(forged).decode().rstrip("=")
            assert client.get("/v1/tuningJobs", params={"pageToken": token}, headers=keys["other"]).status_code == 400
        events = client.get(f"/v1/{mine[0]['name']}/events", headers=keys["other"]).json()["events"]
        assert [e["id"] for e in events] == [1]  # its own first event, whatever the other tenant did
        client.post(f"/v1/{mine[1]['name']}:cancel", headers=keys["other"])
        stream = client.get(
            f"/v1/{mine[1]['name']}/events", params={"alt": "sse"}, headers={**keys["other"], "Last-Event-ID": "1"}
        )
        ids = [int(f.split("\n")[0].removeprefix("id: ")) for f in stream.text.split("\n\n") if f.startswith("id:")]
        assert ids == [2]  # after event 1: the cancel
    finally:
        client.close()
        store.close()


# --- the CLI ---------------------------------------------------------------------------------------------------


def run_measured(args: list[str], stdin: bytes | None = None, timeout: float = 120) -> tuple[int, str, int]:
    """Run a command; its exit status, its output (stdout and stderr) and its peak resident memory in bytes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    assert process.stdin is not None
    try:
        if stdin:
            process.stdin.write(stdin)
        process.stdin.close()
    except BrokenPipeError:
        pass
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    # The peak is read from /proc (VmHWM, this program's own pages since its exec), not from wait4's ru_maxrss:
    # Linux folds the pre-exec copy of this (large) pytest process into the child's ru_maxrss.
    peak = [0]
    watcher = threading.Thread(target=_watch_peak, args=(process.pid, peak))
    watcher.start()
    status = os.waitpid(process.pid, 0)[1]
    timer.cancel()
    watcher.join(timeout=10)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=10)
    process.stdout.close()  # type: ignore[union-attr]
    return process.returncode, b"".join(output).decode("utf-8", "replace"), peak[0]


def _watch_peak(pid: int, peak: list[int]) -> None:
    """Keep ``peak[0]`` at the process's high-water resident memory in bytes until it exits."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        found = [line.split()[1] for line in text.splitlines() if line.startswith("VmHWM:")]
        if not found:  # a zombie: it has exited
            return
        peak[0] = max(peak[0], int(found[0]) * 1024)
        time.sleep(0.02)


def tunery_command() -> list[str]:
    script = Path(sys.executable).parent / "tunery"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from tunery.cli import main; main()"]


def test_the_cli_reads_the_corpus_from_stdin_and_names_each_line(tiny_model: Path) -> None:
    data = corpus() + BIG_LINE + b"\n"
    started = time.monotonic()
    code, output, peak = run_measured(
        [*tunery_command(), "datasets", "validate", "-", "--model", str(tiny_model)], data
    )
    elapsed = time.monotonic() - started
    print(
        f"tunery datasets validate - on the corpus and a 50 MB line: {elapsed:.1f} s, peak RSS {peak / 2**20:.0f} MiB"
    )
    assert code == 1, output
    for secret in SECRETS:
        assert secret not in output, output[-3000:]
    named = [int(found.group(1)) for found in re.finditer(r"(?m)^<stdin>:(\d+): ", output)]
    assert named == [*hostile_numbers(), 2 * len(HOSTILE_LINES) + 2], output
    assert f"{len(HOSTILE_LINES) + 1} valid examples" in output
    assert elapsed < 60 and peak < CHECKER_CEILING, (elapsed, peak)


def test_the_cli_reads_a_pipe_path_like_a_file(tiny_model: Path) -> None:
    """What ``tunery datasets stats <(cat good.jsonl)`` gets: a ``/dev/fd/N`` path of a pipe (in-process)."""
    read, write = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write, f"{GOOD}\n".encode() * 3), os.close(write)))
    writer.start()
    try:
        args = ["datasets", "stats", "--model", str(tiny_model), "--json", f"/dev/fd/{read}"]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    finally:
        writer.join(timeout=10)
        os.close(read)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output[result.output.index("{") :])["supervisedTuningDataStats"]
    assert stats["tuningDatasetExampleCount"] == 3
