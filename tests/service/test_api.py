"""The HTTP API: routes, auth, limits and error shapes in-process (a fake model host), then a real server.

The in-process tests run the FastAPI app with ``TestClient`` against a temporary store and data root; the
``service`` tests start ``tunery serve`` in a subprocess (``tests/service/conftest.py``) and tune, stream,
cancel and generate for real on the tiny model.

    .venv/bin/python -m pytest tests/service/test_api.py -x -q
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tunery.api.app import create_app
from tunery.api.limits import ApiSettings
from tunery.api.schemas import File, ListTuningJobsResponse, Model, TuningJob
from tunery.errors import DatasetError, ServingError
from tunery.jobs.store import Store, TunedModel, new_id, now
from tunery.models.catalog import CATALOG
from tunery.tuning.spec import HYPER_PARAMETERS

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
LOCAL = ("127.0.0.1", 50000)
ROW = {
    "contents": [
        {"role": "user", "parts": [{"text": "my card never arrived"}]},
        {"role": "model", "parts": [{"text": "card_arrival"}]},
    ]
}


class FakeHost:
    """Records what the API asks of the model host; answers like it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.problems: list[dict[str, Any]] = []
        self.fail: Exception | None = None

    def _call(self, op: str, *args: Any) -> None:
        self.calls.append((op, args))
        if self.fail is not None:
            raise self.fail

    def validate(
        self, path: str, model: str, max_length: int, batch_size: int, media_dir: Any = None, until: Any = None
    ) -> dict:
        self._call("validate", Path(path).read_bytes(), model, max_length)
        return {
            "exampleCount": 2,
            "problems": self.problems,
            "complete": True,
            "supervisedTuningDataStats": {"tuningDatasetExampleCount": 2},
        }

    def generate(
        self, model: str, request: dict, max_prompt_tokens: int | None = None, model_version: str | None = None
    ) -> dict[str, Any]:
        self._call("generate", model, request, max_prompt_tokens, model_version)
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}]}

    def count_tokens(self, model: str, request: dict) -> dict[str, Any]:
        self._call("countTokens", model, request)
        return {"totalTokens": 7}

    async def agenerate(self, model: str, request: dict, *, max_prompt_tokens=None, model_version=None, timeout=None):
        return self.generate(model, request, max_prompt_tokens, model_version)

    async def astream(self, model: str, request: dict, *, max_prompt_tokens=None, model_version=None, timeout=None):
        yield self.generate(model, request, max_prompt_tokens, model_version)

    async def acount_tokens(self, model: str, request: dict, *, timeout=None):
        return self.count_tokens(model, request)

    def evict(self, model: str) -> bool:
        self._call("evict", model)
        return True

    def close(self) -> None:
        self.calls.append(("close", ()))


class FakeScheduler:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


class Api:
    """An in-process app on a temporary home, with its store, host, scheduler and a loopback client."""

    def __init__(self, tmp_path: Path, **limits: Any) -> None:
        self.root = tmp_path / "data"
        self.root.mkdir()
        for name in ("classify_gemini.jsonl", "classify_openai.jsonl"):
            (self.root / name).write_bytes((DATA_DIR / name).read_bytes())
        (self.root / "tiny").mkdir()
        (self.root / "tiny" / "config.json").write_text("{}")
        self.settings = ApiSettings(
            data_root=self.root,
            files_dir=tmp_path / "home" / "files",
            tuned_models_dir=tmp_path / "home" / "tuned-models",
            key_cache_seconds=0,
            **limits,
        )
        self.store = Store(f"sqlite:///{tmp_path / 'home' / 'tunery.db'}")
        self.host = FakeHost()
        self.scheduler = FakeScheduler()
        self.app = create_app(
            store=self.store, host=self.host, checker=self.host, scheduler=self.scheduler, settings=self.settings
        )
        self.client = TestClient(self.app, client=LOCAL)

    def create(self, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        body.setdefault("supervisedTuningSpec", {"trainingDatasetUri": "classify_gemini.jsonl"})
        return self.client.post("/v1/tuningJobs", json=body, headers=headers or {})

    def upload(self, content: bytes = b"", headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
        content = content or (json.dumps(ROW) + "\n").encode() * 2
        return self.client.post(
            "/v1/files", files={"file": ("train.jsonl", content)}, data=fields, headers=headers or {}
        )

    def tuned_model(self, tenant: str = "default") -> TunedModel:
        model_id = new_id()
        path = self.settings.tuned_models_dir / model_id
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text("{}")
        record = TunedModel(model_id, tenant, new_id(), "mine", "tiny", "PEFT_ADAPTER", str(path), now())
        return self.store.add_tuned_model(record)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    api = Api(tmp_path)
    yield api
    api.client.close()
    api.store.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def violations(response: httpx.Response) -> dict[str, str]:
    """``{field: description}`` of a 400's BadRequest detail."""
    error = response.json()["error"]
    return {v["field"]: v["description"] for d in error.get("details", []) for v in d.get("fieldViolations", [])}


# --- the API process stays free of torch ------------------------------------------------------------------


def test_the_api_and_the_serve_command_import_no_torch() -> None:
    code = (
        "import sys, tempfile, os\n"
        "os.environ['TUNERY_HOME'] = tempfile.mkdtemp()\n"
        "import tunery.cli, tunery.api.server, tunery.jobs.scheduler\n"
        "from tunery.api.app import create_app\n"
        "from fastapi.testclient import TestClient\n"
        "app = create_app(); app.openapi()\n"
        "with TestClient(app, client=('127.0.0.1', 1)) as c:\n"
        "    assert c.get('/v1/models').status_code == 200\n"
        "    assert c.post('/v1/models/m:countTokens', json={'contents': []}).status_code == 400\n"
        "heavy = ('torch', 'transformers', 'safetensors', 'peft')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- errors -----------------------------------------------------------------------------------------------


def test_validation_errors_are_400_and_name_every_field(api: Api) -> None:
    response = api.create(
        supervisedTuningSpec={
            "trainingDatasetUri": "classify_gemini.jsonl",
            "hyperParameters": {"epochCount": 0, "adapterSize": 3, "learningRateMultiplier": -1},
        },
        tuningMode="LORA",
        labels={"Team": "x"},
        bogus=1,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert set(violations(response)) == {
        "supervisedTuningSpec.hyperParameters.epochCount",
        "supervisedTuningSpec.hyperParameters.adapterSize",
        "supervisedTuningSpec.hyperParameters.learningRateMultiplier",
        "tuningMode",
        "labels.Team (a key)",
        "bogus",
    }
    assert "6 problems" in error["message"]


@pytest.mark.parametrize(
    ("content", "field"),
    [(b"{not json", "body"), (b"[1, 2]", "body"), (b'"text"', "body"), (b"", "body")],
)
def test_a_body_that_is_not_a_json_object_is_400(api: Api, content: bytes, field: str) -> None:
    response = api.client.post("/v1/tuningJobs", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert field in violations(response)


def test_unknown_routes_and_methods_answer_in_the_same_shape(api: Api) -> None:
    assert api.client.get("/v1/nothing").json()["error"]["status"] == "NOT_FOUND"
    response = api.client.put("/v1/tuningJobs")
    assert response.status_code == 405 and response.json()["error"]["code"] == 405
    assert api.client.get("/v1/models/x:generateContent").status_code == 404  # a GET on an action: no 500
    assert api.client.get("/v1/tuningJobs/x:cancel").status_code == 404


def test_a_bug_is_a_500_with_a_generic_message(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.store, "list_files", lambda tenant: 1 / 0)
    client = TestClient(api.app, client=LOCAL, raise_server_exceptions=False)
    response = client.get("/v1/files")
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": 500,
        "message": "internal error; the server log has the details",
        "status": "INTERNAL",
    }


# --- auth -------------------------------------------------------------------------------------------------


def test_without_keys_loopback_clients_are_the_default_tenant_and_others_are_refused(api: Api) -> None:
    assert api.client.get("/v1/tuningJobs").status_code == 200
    for host in ("10.0.0.7", "192.168.1.2", "testclient"):
        response = TestClient(api.app, client=(host, 1234)).get("/v1/tuningJobs")
        assert response.status_code == 403 and response.json()["error"]["status"] == "PERMISSION_DENIED"
    assert TestClient(api.app, client=("::1", 1)).get("/v1/models").status_code == 200
    assert TestClient(api.app, client=("::ffff:127.0.0.1", 1)).get("/v1/models").status_code == 200


def test_once_a_key_exists_every_route_needs_one(api: Api) -> None:
    key = api.store.create_key("alice")
    for method, path in [
        ("GET", "/v1/tuningJobs"),
        ("POST", "/v1/tuningJobs"),
        ("GET", "/v1/files"),
        ("GET", "/v1/models"),
        ("POST", "/v1/models/smollm2-135m-instruct:generateContent"),
        ("GET", "/v1/no-such-route"),
    ]:
        response = api.client.request(method, path, json={})
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    for bad in ("Bearer tk_nope_nope", f"Basic {key}", f"Bearer {key}x", "Bearer", "tk_x"):
        assert api.client.get("/v1/models", headers={"Authorization": bad}).status_code == 401, bad
    assert api.client.get("/v1/models", headers=bearer(key)).status_code == 200
    # the health check and the API description stay open
    assert api.client.get("/healthz").json()["status"] == "ok"
    assert api.client.get("/openapi.json").status_code == 200


def test_an_unauthenticated_request_is_refused_before_its_body_is_read(api: Api) -> None:
    api.store.create_key("alice")
    response = api.client.post("/v1/tuningJobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    response = api.upload(b"x" * 1000)
    assert response.status_code == 401


def test_tenants_see_only_their_own_jobs_files_and_models(api: Api) -> None:
    alice, bob = bearer(api.store.create_key("alice")), bearer(api.store.create_key("bob"))
    job = api.create(headers=alice).json()
    upload = api.upload(headers=alice).json()
    model = api.tuned_model("alice")
    job_id, file_id = job["name"].split("/")[1], upload["name"].split("/")[1]
    for method, path in [
        ("GET", f"/v1/tuningJobs/{job_id}"),
        ("POST", f"/v1/tuningJobs/{job_id}:cancel"),
        ("GET", f"/v1/tuningJobs/{job_id}/events"),
        ("GET", f"/v1/files/{file_id}"),
        ("DELETE", f"/v1/files/{file_id}"),
        ("GET", f"/v1/models/{model.id}"),
        ("DELETE", f"/v1/models/{model.id}"),
    ]:
        assert api.client.request(method, path, headers=bob).status_code == 404, (method, path)
    response = api.client.post(
        f"/v1/models/{model.id}:generateContent", json={"contents": [ROW["contents"][0]]}, headers=bob
    )
    assert response.status_code == 404
    assert api.client.get("/v1/tuningJobs", headers=bob).json()["tuningJobs"] == []
    assert api.client.get("/v1/files", headers=bob).json()["files"] == []
    assert model.id not in json.dumps(api.client.get("/v1/models", headers=bob).json())
    # bob cannot tune on alice's upload either
    response = api.create(headers=bob, supervisedTuningSpec={"trainingDatasetUri": upload["name"]})
    assert response.status_code == 400 and "not found" in response.json()["error"]["message"]
    assert api.client.get(f"/v1/tuningJobs/{job_id}", headers=alice).status_code == 200


# --- limits -----------------------------------------------------------------------------------------------


def test_a_json_body_over_1_mib_is_413_declared_or_streamed(api: Api) -> None:
    big = json.dumps({"contents": [{"parts": [{"text": "x" * (1024 * 1024)}]}]}).encode()
    response = api.client.post("/v1/models/smollm2-135m-instruct:generateContent", content=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == 413

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    response = api.client.post(
        "/v1/models/smollm2-135m-instruct:generateContent",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert api.host.calls == []


def test_an_upload_over_the_limit_is_413_and_leaves_nothing_behind(tmp_path: Path) -> None:
    api = Api(tmp_path, max_upload_bytes=4096)
    assert api.upload(b"x" * 4097).status_code == 413
    assert api.upload(b"x" * 2048 + b"\n").status_code == 201  # what is under the limit goes on to the checks
    response = api.client.post(
        "/v1/files", content=b"x" * 200_000, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413
    leftovers = [p.name for p in api.settings.files_dir.iterdir() if not p.name.endswith(".jsonl")]
    assert leftovers == []
    api.store.close()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pageSize": 0}, "pageSize (query)"),
        ({"pageSize": 101}, "pageSize (query)"),
        ({"pageToken": "9" * 40}, "pageToken (query)"),
        ({"pageToken": "abc"}, "pageToken (query)"),
        ({"state": "RUNNING"}, "state (query)"),
        ({"label": "no-colon"}, "label[0]"),
        ({"label": "Bad:x"}, "label[0]"),
    ],
)
def test_list_parameters_out_of_range_are_400(api: Api, params: dict[str, Any], field: str) -> None:
    response = api.client.get("/v1/tuningJobs", params=params)
    assert response.status_code == 400
    assert field in violations(response)


def test_names_labels_and_event_cursors_are_bounded(api: Api) -> None:
    assert api.create(tunedModelDisplayName="x" * 129).status_code == 400
    assert api.create(labels={f"k{i}": "v" for i in range(65)}).status_code == 400
    assert api.create(labels={"k": "v" * 64}).status_code == 400
    job = api.create(labels={"k": "v" * 63}, tunedModelDisplayName="x" * 128).json()
    events = f"/v1/{job['name']}/events"
    assert api.client.get(events, params={"after": 2**63}).status_code == 400
    assert api.client.get(events, params={"pageSize": 1001}).status_code == 400
    assert api.client.get(events, headers={"Last-Event-ID": "x"}).status_code == 400
    assert api.create(headers={"Idempotency-Key": "k" * 257}).status_code == 400
    assert api.create(tunedModelDisplayName="a\x00b").status_code == 400  # no control characters in a column
    for path in ("/v1/tuningJobs/a%00b", "/v1/files/a%01b", "/v1/models/" + "m" * 129):
        assert api.client.get(path).status_code == 400, path


def test_generation_limits_are_checked_before_the_host_is_asked(api: Api) -> None:
    url = "/v1/models/smollm2-135m-instruct:generateContent"
    user = ROW["contents"][0]
    cases = [
        ({"contents": [user], "generationConfig": {"maxOutputTokens": 8193}}, "generationConfig.maxOutputTokens"),
        ({"contents": [user], "generationConfig": {"temperature": 3}}, "generationConfig.temperature"),
        ({"contents": [user], "generationConfig": {"stopSequences": ["a"] * 6}}, "generationConfig.stopSequences"),
        ({"contents": []}, "contents"),
        ({"contents": ROW["contents"]}, "contents[1].role"),  # the last turn must be the user's
        ({"contents": [{"role": "user", "parts": [{"text": " "}]}]}, "contents[0].parts[0].text"),
        ({"contents": [{"role": "user", "parts": [{}]}]}, "contents[0].parts[0]"),
    ]
    for body, field in cases:
        response = api.client.post(url, json=body)
        assert response.status_code == 400, body
        assert field in violations(response), (field, violations(response))
    assert api.host.calls == []


# --- tuning jobs ------------------------------------------------------------------------------------------


def test_create_job_stores_a_pending_job_with_the_spec_and_wakes_the_scheduler(api: Api) -> None:
    body = {
        "baseModel": "tiny",
        "supervisedTuningSpec": {
            "trainingDatasetUri": "classify_gemini.jsonl",
            "validationDatasetUri": f"file://{api.root}/classify_openai.jsonl",
            "hyperParameters": {"epochCount": 2, "adapterSize": 4, "learningRateMultiplier": 2.5, "batchSize": 4},
        },
        "tuningMode": "PEFT_ADAPTER",
        "tunedModelDisplayName": "tickets",
        "labels": {"team": "support"},
    }
    response = api.client.post("/v1/tuningJobs", json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    TuningJob.model_validate(job)
    assert job["state"] == "JOB_STATE_PENDING" and job["labels"] == {"team": "support"}
    assert job["supervisedTuningSpec"] == body["supervisedTuningSpec"]
    assert api.scheduler.woken == 1
    stored = api.store.get_job("default", job["name"].split("/")[1])
    assert stored.worker_owner is None and stored.request == body
    spec = stored.spec
    assert spec["output"] == str(api.settings.tuned_models_dir / stored.id)
    assert spec["train"] == str(api.root / "classify_gemini.jsonl")
    assert spec["validation"] == str(api.root / "classify_openai.jsonl")
    assert spec["base_model"] == str(api.root / "tiny")
    assert (spec["epochs"], spec["adapter_size"], spec["learning_rate_multiplier"], spec["batch_size"]) == (
        2,
        4,
        2.5,
        4,
    )
    assert spec["display_name"] == "tickets" and spec["method"] == "PEFT_ADAPTER"


@pytest.mark.parametrize("given", [None, True, False])
def test_a_job_without_a_validation_file_holds_out_a_slice_unless_told_not_to(api: Api, given: bool | None) -> None:
    tuning: dict = {"trainingDatasetUri": "classify_gemini.jsonl"}
    if given is not None:
        tuning["autoValidation"] = given
    response = api.create(baseModel="tiny", supervisedTuningSpec=tuning)
    assert response.status_code == 201, response.text
    stored = api.store.get_job("default", response.json()["name"].split("/")[1])
    assert stored.spec["auto_validation"] is (given is not False) and stored.spec["validation"] is None


def test_every_problem_of_a_create_is_reported_at_once(api: Api) -> None:
    response = api.create(
        baseModel="../tiny",
        supervisedTuningSpec={"trainingDatasetUri": "/etc/passwd", "validationDatasetUri": "files/nope"},
    )
    assert response.status_code == 400
    assert violations(response) == {
        "baseModel": "'../tiny': '..' is not allowed",
        "supervisedTuningSpec.trainingDatasetUri": "'/etc/passwd' is outside the data root",
        "supervisedTuningSpec.validationDatasetUri": "files/nope not found (upload it with POST /v1/files)",
    }
    assert "3 problems" in response.json()["error"]["message"]


def test_a_preference_job_names_its_own_fields(api: Api) -> None:
    """``preferenceOptimizationSpec`` (DPO): its problems are named under it, beta's bounds come from the spec, and a
    request with both specs, or neither, is refused."""
    body = {
        "baseModel": "no-such-model",
        "preferenceOptimizationSpec": {
            "trainingDatasetUri": "files/20250101000000aaaaaaaaaaaa",
            "hyperParameters": {"beta": 0, "epochCount": 1},
        },
    }
    found = violations(api.client.post("/v1/tuningJobs", json=body))
    assert set(found) == {
        "preferenceOptimizationSpec.hyperParameters.beta",
        "preferenceOptimizationSpec.trainingDatasetUri",
        "baseModel",
    }
    spec = {"trainingDatasetUri": "classify_gemini.jsonl"}
    both = {"baseModel": "tiny", "preferenceOptimizationSpec": spec, "supervisedTuningSpec": spec}
    for wrong in (both, {"baseModel": "tiny"}):
        response = api.client.post("/v1/tuningJobs", json=wrong)
        assert response.status_code == 400 and "one of the two" in response.text


def test_a_create_with_schema_errors_names_its_bad_references_too(api: Api) -> None:
    response = api.create(
        baseModel="no-such-model",
        supervisedTuningSpec={
            "trainingDatasetUri": "files/20250101000000aaaaaaaaaaaa",
            "validationDatasetUri": "classify_openai.jsonl",  # exists: not a problem
            "hyperParameters": {"epochCount": 0},
        },
        tuningMode="LORA",
    )
    assert response.status_code == 400
    found = violations(response)
    assert set(found) == {
        "supervisedTuningSpec.hyperParameters.epochCount",
        "tuningMode",
        "supervisedTuningSpec.trainingDatasetUri",
        "baseModel",
    }
    assert "not found" in found["supervisedTuningSpec.trainingDatasetUri"]
    assert "neither a catalog model" in found["baseModel"]
    # a field the schema already refuses is named once, and bodies of any shape still get their 400
    too_long = api.create(supervisedTuningSpec={"trainingDatasetUri": "x" * 5000}, baseModel=["tiny"])
    assert too_long.status_code == 400
    names = [v["field"] for v in too_long.json()["error"]["details"][0]["fieldViolations"]]
    assert sorted(names) == ["baseModel", "supervisedTuningSpec.trainingDatasetUri"]
    for body in ([1, 2], "text", {"supervisedTuningSpec": "x"}, {"supervisedTuningSpec": {"trainingDatasetUri": 5}}):
        assert api.client.post("/v1/tuningJobs", json=body).status_code == 400
    assert api.client.get("/v1/tuningJobs").json()["tuningJobs"] == []


def test_an_idempotency_key_replays_the_same_job_and_refuses_another_body(api: Api) -> None:
    first = api.create(headers={"Idempotency-Key": "abc"})
    again = api.create(headers={"Idempotency-Key": "abc"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    other = api.create(headers={"Idempotency-Key": "abc"}, tunedModelDisplayName="other")
    assert other.status_code == 409 and other.json()["error"]["status"] == "ABORTED"
    assert len(api.client.get("/v1/tuningJobs").json()["tuningJobs"]) == 1
    assert api.scheduler.woken == 1


def test_jobs_list_newest_first_by_page_state_and_label(api: Api) -> None:
    names = [api.create(labels={"n": str(i), "team": "a" if i % 2 else "b"}).json()["name"] for i in range(5)]
    api.client.post(f"/v1/{names[0]}:cancel")
    seen, token = [], None
    while True:
        page = api.client.get("/v1/tuningJobs", params={"pageSize": 2, **({"pageToken": token} if token else {})})
        body = page.json()
        ListTuningJobsResponse.model_validate(body)
        seen += [job["name"] for job in body["tuningJobs"]]
        token = body["nextPageToken"]
        if not token:
            break
    assert seen == names[::-1]
    for filters in ([("label", "team:a"), ("label", "n:3")], [("label", "team=a"), ("label", "n=3")]):
        by_label = api.client.get("/v1/tuningJobs", params=filters).json()
        assert [job["name"] for job in by_label["tuningJobs"]] == [names[3]]
    cancelled = api.client.get("/v1/tuningJobs", params={"state": "JOB_STATE_CANCELLED"}).json()["tuningJobs"]
    assert [job["name"] for job in cancelled] == [names[0]]


@pytest.mark.parametrize(
    ("path", "key"),
    [("/v1/tuningJobs", "tuningJobs"), ("/v1/projects/p/locations/l/tuningJobs", "tuningJobs"),
     ("/v1beta/tunedModels", "tunedModels")],
)  # fmt: skip
def test_every_list_of_jobs_pages_with_opaque_tokens(api: Api, path: str, key: str) -> None:
    """The Vertex and Gemini shapes page like the native list: every job once, newest first, and a token that
    is no store sequence number (those count every tenant's jobs)."""
    ids = [api.create().json()["name"].rsplit("/", 1)[1] for _ in range(5)]
    seen, token, tokens = [], None, []
    while True:
        body = api.client.get(path, params={"pageSize": 2, **({"pageToken": token} if token else {})}).json()
        seen += [item["name"].rsplit("/", 1)[1] for item in body[key]]
        token = body.get("nextPageToken")
        if not token:
            break
        tokens.append(token)
    assert seen == ids[::-1] and len(tokens) == 2
    assert not any(t.isdigit() for t in tokens)
    refused = api.client.get(path, params={"pageToken": "1"})
    assert refused.status_code == 400 and "pageToken" in refused.text


def test_cancel_returns_the_job_and_wakes_the_scheduler(api: Api) -> None:
    job = api.create().json()
    response = api.client.post(f"/v1/{job['name']}:cancel")
    assert response.status_code == 200 and response.json()["state"] == "JOB_STATE_CANCELLED"
    assert api.scheduler.woken == 2
    assert api.client.post(f"/v1/{job['name']}:cancel").json()["state"] == "JOB_STATE_CANCELLED"
    assert api.client.post("/v1/tuningJobs/nope:cancel").status_code == 404


def test_events_page_and_stream_as_server_sent_events(api: Api) -> None:
    job = api.create().json()
    job_id = job["name"].split("/")[1]
    for step in range(1, 4):
        api.store.add_event(job_id, "metrics", None, {"step": step})
    events = api.client.get(f"/v1/{job['name']}/events").json()["events"]
    assert [e["type"] for e in events] == ["state", "metrics", "metrics", "metrics"]
    page = api.client.get(f"/v1/{job['name']}/events", params={"after": events[0]["id"], "pageSize": 2}).json()
    assert [e["data"]["step"] for e in page["events"]] == [1, 2]
    api.client.post(f"/v1/{job['name']}:cancel")  # ended: the stream ends once every event is sent
    stream = api.client.get(f"/v1/{job['name']}/events", params={"alt": "sse"}, headers={"Last-Event-ID": "2"})
    assert stream.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in stream.text.split("\n\n") if f]
    ids = [int(f.split("\n")[0].removeprefix("id: ")) for f in frames]
    assert ids == [e["id"] for e in events[2:]] + [ids[-1]] and len(ids) == 3
    last = json.loads(frames[-1].split("\n")[1].removeprefix("data: "))
    assert last["data"]["state"] == "JOB_STATE_CANCELLED"
    assert api.client.get("/v1/tuningJobs/nope/events", params={"alt": "sse"}).status_code == 404


def test_an_sse_stream_follows_a_job_until_it_ends(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunery.api.routes.jobs as jobs_routes

    monkeypatch.setattr(jobs_routes, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(jobs_routes, "KEEPALIVE_SECONDS", 0.1)
    job_id = api.create().json()["name"].split("/")[1]

    def finish() -> None:
        time.sleep(0.4)
        api.store.add_event(job_id, "metrics", None, {"step": 1})
        api.store.update_job(job_id, state="JOB_STATE_SUCCEEDED", message="done")

    import threading

    threading.Thread(target=finish).start()
    text = api.client.get(f"/v1/tuningJobs/{job_id}/events", params={"alt": "sse"}).text
    assert ": keep-alive" in text
    data = [json.loads(line.removeprefix("data: ")) for line in text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in data] == ["state", "metrics", "state"]
    assert data[-1]["data"]["state"] == "JOB_STATE_SUCCEEDED"


# --- files ------------------------------------------------------------------------------------------------


def test_an_upload_is_checked_by_the_host_kept_and_named(api: Api) -> None:
    content = (json.dumps(ROW) + "\n").encode() * 2
    response = api.upload(content, model="tiny", maxLength="256")
    assert response.status_code == 201, response.text
    resource = response.json()
    File.model_validate(resource)
    assert resource["exampleCount"] == 2 and resource["sizeBytes"] == str(len(content))
    assert resource["displayName"] == "train.jsonl" and resource["tokenizedWith"] == "tiny"
    op, (seen, model, max_length) = api.host.calls[0]
    assert (op, seen, model, max_length) == ("validate", content, str(api.root / "tiny"), 256)
    file_id = resource["name"].split("/")[1]
    stored = api.store.get_file("default", file_id)
    assert Path(stored.path).read_bytes() == content and Path(stored.path).parent == api.settings.files_dir
    assert api.client.get(f"/v1/{resource['name']}").json() == resource
    listed = api.client.get("/v1/files").json()
    assert listed["files"] == listed["data"] == [resource]  # Gemini's clients read files, OpenAI's data
    # the default model and length; a file name keeps its printable characters only
    form = b'--B\r\nContent-Disposition: form-data; name="file"; filename="../a\x00b\x1b.jsonl"\r\n\r\n'
    form += content + b"\r\n--B--\r\n"
    response = api.client.post("/v1/files", content=form, headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert api.host.calls[-1][1][1:] == ("smollm2-135m-instruct", 1024)
    assert response.json()["displayName"] == "ab.jsonl"


def test_an_upload_with_problems_is_400_by_line_and_field_and_not_kept(api: Api) -> None:
    api.host.problems = [
        {"line": 2, "field": "contents[1].role", "message": "unknown role 'bot'", "severity": "error"},
        {"line": 5, "field": "line", "message": "invalid JSON", "severity": "error"},
        {"line": 7, "field": "contents", "message": "truncated", "severity": "warning"},
    ]
    response = api.upload()
    assert response.status_code == 400
    error = response.json()["error"]
    assert "2 problems" in error["message"]
    assert error["details"][0]["fieldViolations"] == [
        {"field": "contents[1].role", "description": "unknown role 'bot'", "line": 2},
        {"field": "line", "description": "invalid JSON", "line": 5},
    ]
    assert list(api.settings.files_dir.iterdir()) == []
    assert api.client.get("/v1/files").json()["files"] == []


def test_a_malformed_upload_form_is_400_naming_its_fields(api: Api) -> None:
    response = api.client.post("/v1/files", data={"model": "tiny"})
    assert response.status_code == 400
    response = api.client.post(
        "/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"maxLength": "2", "model": "../x", "x": "1"}
    )
    assert set(violations(response)) == {"maxLength", "model", "x"}
    response = api.client.post("/v1/files", content=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    response = api.client.post(
        "/v1/files", content=b"--b\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 400
    assert api.host.calls == [] and list(api.settings.files_dir.iterdir()) == []


def test_deleting_a_file_removes_its_bytes_but_not_a_jobs_copy(api: Api) -> None:
    resource = api.upload().json()
    path = Path(api.store.get_file("default", resource["name"].split("/")[1]).path)
    job = api.create(supervisedTuningSpec={"trainingDatasetUri": resource["name"]}).json()
    train = Path(api.store.get_job("default", job["name"].split("/")[1]).spec["train"])
    assert train != path and train.read_bytes() == path.read_bytes()
    assert api.client.delete(f"/v1/{resource['name']}").json()["deleted"] is True  # OpenAI's FileDeleted
    assert not path.exists() and train.exists()
    assert api.client.get(f"/v1/{resource['name']}").status_code == 404
    assert api.client.delete(f"/v1/{resource['name']}").status_code == 404


# --- models -----------------------------------------------------------------------------------------------


def test_models_list_the_catalog_and_the_tenants_tuned_models(api: Api) -> None:
    tuned = api.tuned_model()
    models = api.client.get("/v1/models").json()["models"]
    for model in models:
        Model.model_validate(model)
    names = [m["name"] for m in models]
    catalog = [f"models/{model_id}" for model_id in CATALOG]
    assert names[:2] == ["models/smollm2-135m-instruct", "models/gemma-3-270m"] and names[: len(catalog)] == catalog
    assert names[len(catalog)] == f"models/{tuned.id}"
    resource = api.client.get(f"/v1/models/{tuned.id}").json()
    assert resource["endpoint"] == f"http://testserver/v1/models/{tuned.id}:generateContent"
    assert api.client.get("/v1/models/smollm2-135m-instruct").json()["contextLength"] == 8192


def test_generate_and_count_tokens_go_to_the_host_with_the_model_path(api: Api) -> None:
    tuned = api.tuned_model()
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 5}}
    response = api.client.post(f"/v1/models/{tuned.id}:generateContent", json=body)
    assert response.status_code == 200 and response.json()["candidates"][0]["finishReason"] == "STOP"
    assert api.host.calls[-1] == ("generate", (tuned.path, body, 8192, tuned.id))
    response = api.client.post("/v1/models/smollm2-135m-instruct:countTokens", json={"contents": body["contents"]})
    assert response.json() == {"totalTokens": 7}
    assert api.host.calls[-1] == ("countTokens", ("smollm2-135m-instruct", {"contents": body["contents"]}))
    assert api.client.post("/v1/models/nope:generateContent", json=body).status_code == 404


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (ServingError("the model host died"), 503, "UNAVAILABLE"),
        (ServingError("timed out", 504), 504, "DEADLINE_EXCEEDED"),
        (DatasetError("bad", []), 400, "INVALID_ARGUMENT"),
    ],
)
def test_model_host_errors_keep_their_status(api: Api, error: Exception, code: int, status: str) -> None:
    api.host.fail = error
    response = api.client.post(
        "/v1/models/smollm2-135m-instruct:generateContent", json={"contents": [ROW["contents"][0]]}
    )
    assert (response.status_code, response.json()["error"]["status"]) == (code, status)


def test_deleting_a_tuned_model_removes_it_and_evicts_it_but_base_models_stay(api: Api) -> None:
    tuned = api.tuned_model()
    assert api.client.delete(f"/v1/models/{tuned.id}").json() == {}
    assert not Path(tuned.path).exists() and ("evict", (tuned.path,)) in api.host.calls
    assert api.client.get(f"/v1/models/{tuned.id}").status_code == 404
    response = api.client.delete("/v1/models/smollm2-135m-instruct")
    assert response.status_code == 400 and "base model" in response.json()["error"]["message"]


# --- the OpenAPI document -----------------------------------------------------------------------------------


def test_the_openapi_document_describes_the_real_bodies_and_the_bearer_key(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    assert set(schemas["HyperParameters"]["properties"]) == set(HYPER_PARAMETERS) - {"beta"}  # DPO's alone
    assert set(schemas["PreferenceHyperParameters"]["properties"]) == set(HYPER_PARAMETERS)
    create = schemas["CreateTuningJobRequest"]  # one of the two specs (checked by the server)
    assert {"supervisedTuningSpec", "preferenceOptimizationSpec"} <= set(create["properties"])
    upload = doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"] and upload["properties"]["file"]["format"] == "binary"
    for path, method in [("/v1/tuningJobs", "post"), ("/v1/models/{model_id}:generateContent", "post")]:
        assert "400" in doc["paths"][path][method]["responses"]
        assert doc["paths"][path][method]["security"] == [{"HTTPBearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]


# --- a real server: tune, stream, generate, cancel -----------------------------------------------------------

TINY_JOB = {
    "baseModel": "tiny",
    "supervisedTuningSpec": {
        "trainingDatasetUri": "classify_gemini.jsonl",
        "validationDatasetUri": "classify_openai.jsonl",
        "hyperParameters": {"epochCount": 2, "batchSize": 4, "learningRateMultiplier": 20},
    },
    "tunedModelDisplayName": "tickets",
    "labels": {"suite": "api"},
}
LONG_JOB = {
    "baseModel": "tiny",
    "supervisedTuningSpec": {
        "trainingDatasetUri": "long.jsonl",
        "autoValidation": False,
        "hyperParameters": {"epochCount": 3, "batchSize": 8},
    },
}


def stream_events(client: httpx.Client, name: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every event of a job, read as Server-Sent Events until the server ends the stream."""
    found = []
    with client.stream("GET", f"/v1/{name}/events", params={"alt": "sse"}, headers=headers, timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                found.append(json.loads(line.removeprefix("data: ")))
    return found


def maps_torch(pid: int) -> bool:
    """Whether a process has torch's shared library loaded (it would, had it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_a_job_tunes_streams_its_events_and_serves_its_tuned_model(service) -> None:
    svc = service()
    response = svc.client.post("/v1/tuningJobs", json=TINY_JOB)
    assert response.status_code == 201, response.text
    name = response.json()["name"]
    events = stream_events(svc.client, name)
    states = [e["data"]["state"] for e in events if e["type"] == "state" and "state" in e.get("data", {})]
    assert states[0] == "JOB_STATE_PENDING" and states[-1] == "JOB_STATE_SUCCEEDED", events
    assert any(e["type"] == "state" and "attempt 1" in e.get("message", "") for e in events)
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics" and "step" in e["data"]]
    assert steps and steps == sorted(steps)
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})

    job = svc.client.get(f"/v1/{name}").json()
    TuningJob.model_validate(job)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["endTime"] >= job["startTime"]
    model = job["tunedModel"]["model"]
    assert job["tunedModel"]["endpoint"] == f"{svc.url}/v1/{model}:generateContent"
    assert job["tuningDataStats"]["supervisedTuningDataStats"]["tuningDatasetExampleCount"] == 10
    assert model in [m["name"] for m in svc.client.get("/v1/models").json()["models"]]
    tuned_dir = svc.home / "tuned-models" / name.split("/")[1]
    assert (tuned_dir / "adapter_config.json").is_file()

    prompt = {"contents": [{"role": "user", "parts": [{"text": "my card never arrived"}]}]}
    generated = svc.client.post(
        job["tunedModel"]["endpoint"], json={**prompt, "generationConfig": {"maxOutputTokens": 4}}
    )
    assert generated.status_code == 200, generated.text
    body = generated.json()
    assert isinstance(body["candidates"][0]["content"]["parts"][0]["text"], str)
    assert body["modelVersion"] == model.removeprefix("models/")
    assert 1 <= body["usageMetadata"]["candidatesTokenCount"] <= 4
    counted = svc.client.post(f"/v1/{model}:countTokens", json=prompt).json()
    assert counted["totalTokens"] == body["usageMetadata"]["promptTokenCount"]
    evaluation = svc.client.get(f"/v1/{model}/evaluation").json()  # run on validationDatasetUri after tuning
    assert evaluation["model"] == model and evaluation["task"]["kind"] == "classification", evaluation
    assert 0 <= evaluation["metrics"]["accuracy"] <= 1 and evaluation["metrics"]["examples"] == 10
    from tunery.serving.engine import served_weights  # what the job's evaluation measured: the form served here

    served = served_weights()
    assert evaluation["weights"] == served and ("reference" in evaluation) == (served != "fp32"), evaluation
    assert str(svc.home) not in json.dumps(evaluation)  # no server paths
    assert svc.client.get("/v1/models/smollm2-135m-instruct/evaluation").status_code == 404
    assert not maps_torch(svc.process.pid)  # tuning and generation ran in other processes

    assert svc.client.delete(f"/v1/{model}").json() == {}
    assert not tuned_dir.exists()
    assert svc.client.post(f"/v1/{model}:generateContent", json=prompt).status_code == 404


def test_cancelling_a_running_and_a_queued_job(service) -> None:
    svc = service(workers=1)
    running = svc.client.post("/v1/tuningJobs", json=LONG_JOB).json()
    queued = svc.client.post("/v1/tuningJobs", json=TINY_JOB).json()
    deadline = time.monotonic() + 180
    while not any(e["type"] == "metrics" for e in svc.events(running["name"])):
        assert time.monotonic() < deadline, "".join(svc.output)
        time.sleep(0.1)
    cancelled = svc.client.post(f"/v1/{queued['name']}:cancel").json()
    assert cancelled["state"] == "JOB_STATE_CANCELLED"  # no worker had it: at once
    cancelling = svc.client.post(f"/v1/{running['name']}:cancel").json()
    assert cancelling["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")
    done = svc.wait_job(running["name"])
    assert done["state"] == "JOB_STATE_CANCELLED" and done["error"]["code"] == 1
    assert "tunedModel" not in done
    assert svc.client.get(f"/v1/{queued['name']}").json()["state"] == "JOB_STATE_CANCELLED"


def test_keys_tenants_uploads_and_bad_requests_against_a_real_server(service) -> None:
    svc = service(start=False)
    svc.env["TUNERY_MAX_UPLOAD_BYTES"] = "20000"
    svc.start()
    assert svc.client.get("/v1/models").status_code == 200  # no key yet: a loopback client is "default"
    alice, bob = bearer(svc.create_key("alice")), bearer(svc.create_key("bob"))
    time.sleep(1.1)  # the server asks whether keys exist at most once a second
    missing = svc.client.get("/v1/tuningJobs")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert svc.client.get("/healthz").status_code == 200

    good = (DATA_DIR / "classify_gemini.jsonl").read_bytes()
    uploaded = svc.client.post(
        "/v1/files", files={"file": ("train.jsonl", good)}, data={"model": "tiny", "maxLength": "256"}, headers=alice
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["exampleCount"] == 10
    assert uploaded.json()["supervisedTuningDataStats"]["tuningDatasetExampleCount"] == 10
    bad = svc.client.post(
        "/v1/files",
        files={"file": ("bad.jsonl", (DATA_DIR / "bad" / "mixed.jsonl").read_bytes())},
        data={"model": "tiny"},
        headers=alice,
    )
    assert bad.status_code == 400, bad.text
    assert all(v.get("line") for d in bad.json()["error"]["details"] for v in d.get("fieldViolations", []))
    too_big = svc.client.post("/v1/files", files={"file": ("big.jsonl", good * 40)}, headers=alice)
    assert too_big.status_code == 413

    body = {
        **TINY_JOB,
        "supervisedTuningSpec": {**TINY_JOB["supervisedTuningSpec"], "trainingDatasetUri": uploaded.json()["name"]},
    }
    first = svc.client.post("/v1/tuningJobs", json=body, headers={**alice, "Idempotency-Key": "retry-1"})
    again = svc.client.post("/v1/tuningJobs", json=body, headers={**alice, "Idempotency-Key": "retry-1"})
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["name"] == again.json()["name"]
    changed = svc.client.post(
        "/v1/tuningJobs", json={**body, "labels": {}}, headers={**alice, "Idempotency-Key": "retry-1"}
    )
    assert changed.status_code == 409
    name = first.json()["name"]
    assert svc.client.get(f"/v1/{name}", headers=bob).status_code == 404
    assert svc.client.post(f"/v1/{name}:cancel", headers=bob).status_code == 404
    assert svc.client.post(f"/v1/{name}:cancel", headers=alice).status_code == 200

    for response in (
        svc.client.post("/v1/tuningJobs", content=b"x" * (2 * 1024 * 1024), headers=alice),
        svc.client.post("/v1/tuningJobs", content=b"{oops", headers={**alice, "Content-Type": "application/json"}),
        svc.client.post("/v1/models/tiny:generateContent", json={"contents": "hi"}, headers=alice),
        svc.client.get("/v1/tuningJobs", params={"pageSize": 10**9}, headers=alice),
        svc.client.post(
            "/v1/tuningJobs", json={"supervisedTuningSpec": {"trainingDatasetUri": "../../etc/passwd"}}, headers=alice
        ),
    ):
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()["error"]) >= {"code", "message", "status"}
    assert svc.client.get("/healthz").status_code == 200
    assert svc.process.poll() is None


def test_serve_refuses_a_public_address_without_a_key(tmp_path: Path) -> None:
    env = {**os.environ, "TUNERY_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "tunery", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no API key exists" in result.stderr and "tunery keys create" in result.stderr
    assert result.stdout == ""


def test_an_upload_is_checked_while_the_model_host_is_busy(service) -> None:
    svc = service()
    model = TunedModel(new_id(), "default", new_id(), "tiny", "tiny", "FULL", str(svc.data_root / "tiny"), now())
    svc.store.add_tuned_model(model)  # the tiny model, served as a fully tuned one
    prompt = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}], "generationConfig": {"maxOutputTokens": 2}}
    path = f"/v1/models/{model.id}:generateContent"
    assert svc.client.post(path, json=prompt).status_code == 200
    (host,) = model_hosts(svc.process.pid)
    os.kill(host, signal.SIGSTOP)  # the host is stuck in a call, as in a long generation
    try:
        upload = {"file": ("train.jsonl", (DATA_DIR / "classify_gemini.jsonl").read_bytes())}
        uploaded = svc.client.post("/v1/files", files=upload, data={"model": "tiny"}, timeout=60)
        assert uploaded.status_code == 201, uploaded.text  # checked by the dataset checker, not this host
    finally:
        os.kill(host, signal.SIGCONT)
    assert len(model_hosts(svc.process.pid)) == 2
    assert svc.client.post(path, json=prompt).status_code == 200


def model_hosts(parent: int) -> list[int]:
    """The pids of ``parent``'s model host subprocesses."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # the process may end while it is read
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"tunery.serving.host" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found
