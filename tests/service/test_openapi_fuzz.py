"""Property-based requests from the server's own OpenAPI document: none may get a 5xx.

Schemathesis generates requests for every operation of ``/openapi.json``, schema-valid (positive) and
schema-violating (negative), against a real ``tunery serve`` with an API key; the only check is
``not_a_server_error``. Examples are bounded and derandomized (the same requests every run), each request
has a timeout, and nothing generated can start long work: random dataset URIs and model ids do not exist
on the data root, and an upload without a ``model`` is counted with the tiny model's tokenizer. A second
pass fixes the path's job and file ids to ones that exist (the job cancelled, so its event stream ends).

    .venv/bin/python -m pytest tests/service/test_openapi_fuzz.py -x -q
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

EXAMPLES = 10  # per operation and mode: about 350 requests
TIMEOUT = 30  # seconds for one request; a hang fails the test instead of stalling it


def test_no_generated_request_gets_a_server_error(service) -> None:
    svc = service(workers=1, start=False)
    svc.env["TUNERY_UPLOAD_MODEL"] = "tiny"  # an upload whose model is "" too: never convert the default model
    svc.start()
    auth = {"Authorization": f"Bearer {svc.create_key('fuzz')}"}
    time.sleep(1.1)  # the server asks whether keys exist at most once a second
    schema = schemathesis.openapi.from_url(f"{svc.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        for mode in GenerationMode:
            _fuzz(operation, mode, svc.url, auth)
    # again on a job and a file that exist, so the parameters and bodies reach a real resource
    ids = _existing_resources(svc, auth)
    for operation in operations:
        known = {name: ids[name] for name in ("job_id", "file_id") if "{" + name + "}" in operation.path}
        if known:
            for mode in GenerationMode:
                _fuzz(operation, mode, svc.url, auth, known)
    assert svc.process.poll() is None
    assert svc.client.get("/healthz").status_code == 200
    assert "unexpected error" not in "".join(svc.output)


def _existing_resources(svc, auth: dict[str, str]) -> dict[str, str]:
    """An uploaded file, and a job that has ended (cancelled: its event stream ends, nothing trains)."""
    data = (svc.data_root / "classify_gemini.jsonl").read_bytes()
    uploaded = svc.client.post("/v1/files", files={"file": ("t.jsonl", data)}, data={"model": "tiny"}, headers=auth)
    body = {"baseModel": "tiny", "supervisedTuningSpec": {"trainingDatasetUri": uploaded.json()["name"]}}
    job = svc.client.post("/v1/tuningJobs", json=body, headers=auth).json()
    svc.client.post(f"/v1/{job['name']}:cancel", headers=auth)
    svc.wait_job(job["name"], auth["Authorization"].removeprefix("Bearer "))
    return {"job_id": job["name"].split("/")[1], "file_id": uploaded.json()["name"].split("/")[1]}


def _fuzz(
    operation, mode: GenerationMode, url: str, auth: dict[str, str], path_parameters: dict[str, str] | None = None
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case) -> None:
        if operation.path == "/v1/files" and isinstance(case.body, dict):
            case.body.setdefault("model", "tiny")  # the catalog default would convert a real model first
        case.call_and_validate(base_url=url, headers=auth, checks=[not_a_server_error], timeout=TIMEOUT)

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation that takes nothing: no invalid request exists
        pass
    except Exception as exc:
        pytest.fail(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
