"""Fuzzing with hypothesis: the JSONL dataset checker and the tuning-job request schemas never fail on any input.

The checker reads generated files (random bytes, random JSON, dataset-shaped lines with wrong values, deep
nesting, long numbers, lone surrogates) and must answer with a report, never an exception; the create-job
route takes generated bodies and must answer 2xx or 4xx, never 5xx. Each target runs for ``FUZZ_SECONDS``:
60 s when ``CI=true``, 3 s otherwise.

    CI=true .venv/bin/python -m pytest tests/unit/test_fuzz.py -q
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tunery.api.app import create_app
from tunery.api.limits import ApiSettings
from tunery.api.schemas import CreateTuningJobRequest
from tunery.data.validation import MAX_MESSAGE_CHARS, read_examples
from tunery.jobs.store import Store
from tunery.tuning.spec import HYPER_PARAMETERS

FUZZ_SECONDS = 20.0 if os.environ.get("CI") == "true" else 3.0
FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz_for(seconds: float, run: Callable[[], None]) -> int:
    """Call a ``@given`` test again and again (each call tries new examples) until ``seconds`` have passed."""
    deadline, rounds = time.monotonic() + seconds, 0
    while True:
        run()
        rounds += 1
        if time.monotonic() >= deadline:
            return rounds


# --- values ---------------------------------------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.text(alphabet=st.one_of(st.characters(), SURROGATES, st.sampled_from('\x00\n\r"\\{}[]')), max_size=40)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20
)
ROLES = st.sampled_from(["user", "model", "assistant", "system", "bot", "", 1, None])


def anything_or(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``value`` most of the time, any JSON value sometimes."""
    return st.one_of(value, value, value, JSON)


PART = st.one_of(
    st.fixed_dictionaries({"text": anything_or(TEXT)}),
    st.fixed_dictionaries(
        {"inlineData": anything_or(st.fixed_dictionaries({"mimeType": anything_or(TEXT), "data": TEXT}))}
    ),
    st.fixed_dictionaries({"fileData": anything_or(st.fixed_dictionaries({"mimeType": TEXT, "fileUri": TEXT}))}),
    JSON,
)
GEMINI = st.fixed_dictionaries(
    {
        "contents": anything_or(
            st.lists(
                st.fixed_dictionaries({"role": ROLES, "parts": anything_or(st.lists(PART, max_size=3))}), max_size=4
            )
        )
    },
    optional={"systemInstruction": anything_or(st.fixed_dictionaries({"parts": st.lists(PART, max_size=2)}))},
)
OPENAI = st.fixed_dictionaries(
    {
        "messages": anything_or(
            st.lists(st.fixed_dictionaries({"role": ROLES, "content": anything_or(TEXT)}), max_size=4)
        )
    }
)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """One line: random bytes, random JSON, a dataset-shaped object, deep brackets or a long number."""
    kind = draw(st.sampled_from(["bytes", "json", "gemini", "openai", "deep", "number"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)).replace(b"\n", b" ")
    if kind == "deep":
        opening = draw(st.sampled_from(["[", "{", '{"a":', '[{"contents":']))
        return (opening * draw(st.integers(0, 5000)) + "]" * draw(st.integers(0, 5000))).encode()
    if kind == "number":
        return ('{"n": ' + draw(st.sampled_from(["", "-"])) + "9" * draw(st.integers(1, 6000)) + "}").encode()
    value = draw({"json": JSON, "gemini": GEMINI, "openai": OPENAI}[kind])
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    return text.encode("utf-8", "surrogatepass")  # unescaped surrogates are bytes that are not UTF-8


FILES = st.lists(lines(), max_size=8).map(lambda found: b"\n".join(found)) | st.binary(max_size=300)


def test_the_dataset_checker_reports_on_any_file(tiny_tokenizer: Callable[[str], object]) -> None:
    tokenizer = tiny_tokenizer("chatml")

    @FUZZ
    @given(data=FILES, with_tokenizer=st.booleans())
    def check(data: bytes, with_tokenizer: bool) -> None:
        report = read_examples(io.BytesIO(data), name="fuzz.jsonl", tokenizer=tokenizer if with_tokenizer else None)
        count = data.count(b"\n") + 1
        error_lines = {p.line for p in report.errors}
        for problem in report.problems:
            assert 0 <= problem.line <= count and problem.severity in ("error", "warning")
            assert len(problem.message) <= MAX_MESSAGE_CHARS
            json.dumps(problem.to_dict(), ensure_ascii=False).encode("utf-8")  # what a reply or a terminal takes
        assert all(example.line not in error_lines for example in report.examples)
        assert len(report.encoded) == (len(report.examples) if with_tokenizer else 0)
        assert report.ok == (not report.errors)

    started = time.monotonic()
    rounds = fuzz_for(FUZZ_SECONDS, check)
    print(f"dataset checker: {rounds * 25} files in {time.monotonic() - started:.1f} s")


# --- tuning-job requests -----------------------------------------------------------------------------------------


HYPER = st.dictionaries(
    st.sampled_from([*HYPER_PARAMETERS, "warmup", "epochs"]),
    st.one_of(
        st.integers(min_value=-5, max_value=10**20),
        st.sampled_from([1, 2, 4, 8, 16, 32, 64, 0.5, 1.0, 16.0, "3", "16", True, False, None, [], {}]),
        st.floats(allow_nan=False),
        SCALARS,
    ),
    max_size=4,
)
SPEC = st.fixed_dictionaries(
    {
        "trainingDatasetUri": anything_or(
            st.sampled_from(["train.jsonl", "files/nope", "../x", "file:///etc/passwd", "a\x00"]) | TEXT
        )
    },
    optional={
        "hyperParameters": anything_or(HYPER),
        "validationDatasetUri": anything_or(st.sampled_from(["train.jsonl", "/etc/passwd"])),
        "tuningMode": TEXT,
    },
)
BODY = st.fixed_dictionaries(
    {"supervisedTuningSpec": anything_or(SPEC)},
    optional={
        "baseModel": anything_or(
            st.sampled_from(["tiny", "smollm2-135m-instruct", "nope", "/etc", "tiny/../.."]) | TEXT
        ),
        "tuningMode": anything_or(st.sampled_from(["PEFT_ADAPTER", "FULL", "lora", "full"])),
        "tunedModelDisplayName": anything_or(TEXT),
        "labels": anything_or(st.dictionaries(TEXT, TEXT, max_size=3)),
        "computeConfig": JSON,
        "extra": JSON,
    },
)


QUERY = st.lists(
    st.tuples(
        st.sampled_from(["pageToken", "pageSize", "label", "state", "x"]),
        st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
        | st.sampled_from(["YWZ0ZXI6bm9wZQ", "12", "team:a", "JOB_STATE_PENDING", "-1", "100"]),
    ),
    max_size=4,
)


class NoScheduler:
    def wake(self) -> None:
        pass


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    root = tmp_path / "data"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "config.json").write_text("{}")
    (root / "train.jsonl").write_text("{}\n")
    store = Store(f"sqlite:///{tmp_path / 'fuzz.db'}")
    settings_ = ApiSettings(data_root=root, files_dir=tmp_path / "files", tuned_models_dir=tmp_path / "tuned")
    app = create_app(store=store, scheduler=NoScheduler(), settings=settings_)
    test_client = TestClient(app, client=("127.0.0.1", 50000), raise_server_exceptions=False)
    yield test_client
    test_client.close()
    store.close()


def body_bytes(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


def test_the_create_job_schema_and_route_answer_any_body_with_a_2xx_or_4xx(client: TestClient) -> None:
    statuses: dict[int, int] = {}

    @FUZZ
    @given(body=st.one_of(BODY, BODY, JSON), query=QUERY)
    def check(body: Any, query: list[tuple[str, str]]) -> None:
        listed = client.get("/v1/tuningJobs", params=query)
        assert listed.status_code in (200, 400), listed.text[:500]
        with contextlib.suppress(ValidationError):  # the only way the schema may refuse a body
            CreateTuningJobRequest.model_validate(body)
        response = client.post("/v1/tuningJobs", content=body_bytes(body), headers={"content-type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 201, 400, 429), response.text[:500]
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["code"] == response.status_code and "Traceback" not in error["message"]

    started = time.monotonic()
    rounds = fuzz_for(FUZZ_SECONDS, check)
    print(f"create job: {rounds * 25} bodies in {time.monotonic() - started:.1f} s, statuses {statuses}")
    assert statuses.get(400), statuses  # the generator reaches the checks
