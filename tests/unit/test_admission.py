"""Admission control (``tunery.api.admission``): fair turns across tenants, the limits, deadlines, disconnects,
and the tuning-job limit through the app. No server, no model: an asyncio loop and an in-process app.

    .venv/bin/python -m pytest tests/unit/test_admission.py -q
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tunery.api.admission import Admission, HostQueue, deadline, estimate_tokens, until_disconnected
from tunery.api.app import create_app
from tunery.api.errors import ApiError
from tunery.api.limits import ApiSettings
from tunery.errors import ResourceExhaustedError, ServingError
from tunery.jobs.store import Store
from tunery.settings import AdmissionLimits

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
HOST = object()  # a model host, as far as admission cares: something to key a queue by
FAR = 1e9  # a deadline that never comes


def later() -> float:
    return time.monotonic() + FAR


def body(text: str = "hi", max_output_tokens: int | None = None) -> dict[str, Any]:
    config = {} if max_output_tokens is None else {"generationConfig": {"maxOutputTokens": max_output_tokens}}
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **config}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_flood_from_one_tenant_does_not_starve_another_tenants_single_call() -> None:
    async def run() -> list[str]:
        admission = Admission(AdmissionLimits(host_slots=1, host_queue=100, tenant_requests=100))
        order: list[str] = []
        gates: dict[str, asyncio.Event] = {}

        async def call(tenant: str, name: str) -> None:
            gates[name] = asyncio.Event()
            async with admission.admitted(HOST, tenant, 10, later()):
                order.append(name)
                await gates[name].wait()

        tasks = [asyncio.create_task(call("a", f"a{i}")) for i in range(6)]
        await settle()
        tasks.append(asyncio.create_task(call("b", "b0")))  # arrives after a's whole flood
        await settle()
        while len(order) < 7:
            gates[order[-1]].set()  # the running call ends; the slot goes to the next in turn
            await settle()
        gates[order[-1]].set()
        await asyncio.gather(*tasks)
        assert admission.queue(HOST).running == 0 and admission.load("a") == admission.load("b") == (0, 0)
        return order

    # a0 held the slot, a1 was first in line; then b's turn, before the rest of a's flood
    assert asyncio.run(run()) == ["a0", "a1", "b0", "a2", "a3", "a4", "a5"]


def test_three_tenants_take_turns_oldest_call_first_within_each() -> None:
    queue = HostQueue(slots=1, limit=100)

    async def run() -> list[str]:
        order: list[str] = []
        await queue.acquire("x", 1)  # the slot is taken

        async def wait(tenant: str, name: str) -> None:
            await queue.acquire(tenant, FAR)
            order.append(name)

        tasks = []
        for name in ("a1", "a2", "a3", "b1", "b2", "c1"):
            tasks.append(asyncio.create_task(wait(name[0], name)))
            await settle()
        for _ in range(7):
            queue.release(0.5)
            await settle()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert queue.running == 0 and queue.waiting == 0
    assert 0.5 < queue.call_seconds < 1.0  # the smoothed call time moved towards what was measured


def test_a_tenant_past_its_request_limit_is_refused_at_once_and_others_are_not() -> None:
    async def run() -> None:
        admission = Admission(AdmissionLimits(host_slots=1, host_queue=100, tenant_requests=3))
        release = asyncio.Event()

        async def call(tenant: str) -> str:
            async with admission.admitted(HOST, tenant, 10, later()):
                await release.wait()
            return "answered"

        flood = [asyncio.create_task(call("a")) for _ in range(3)]
        await settle()
        started = time.monotonic()
        with pytest.raises(ResourceExhaustedError, match="too many generation requests in flight") as refused:
            await call("a")
        assert time.monotonic() - started < 0.5 and refused.value.retry_after >= 1
        other = asyncio.create_task(call("b"))  # another tenant waits its turn instead
        await settle()
        assert admission.load("a") == (3, 30) and admission.load("b") == (1, 10)
        release.set()
        assert await asyncio.gather(*flood, other) == ["answered"] * 4

    asyncio.run(run())


def test_the_token_limit_counts_what_is_in_flight_and_always_admits_a_tenants_first_call() -> None:
    async def run() -> None:
        admission = Admission(AdmissionLimits(host_slots=4, tenant_tokens=100))
        async with admission.admitted(HOST, "a", 500, later()):  # alone: admitted whatever its size
            with pytest.raises(ResourceExhaustedError, match="too many tokens in flight.*limit of 100"):
                async with admission.admitted(HOST, "a", 10, later()):
                    pass
            async with (
                admission.admitted(HOST, "b", 60, later()),
                admission.admitted(HOST, "b", 40, later()),  # 100: at the limit, not past it
            ):
                assert admission.load("b") == (2, 100)
        async with admission.admitted(HOST, "a", 10, later()):  # the big one has left
            assert admission.load("a") == (1, 10)

    asyncio.run(run())


def test_a_full_queue_refuses_and_a_long_wait_ends_in_429_or_the_clients_504() -> None:
    async def run() -> None:
        admission = Admission(AdmissionLimits(host_slots=1, host_queue=2, queue_seconds=0.2, tenant_requests=100))
        queue = admission.queue(HOST)
        await queue.acquire("stuck", FAR)  # a call the host never finishes
        waiters = [asyncio.create_task(admission.enter(HOST, t, 1, later())) for t in ("a", "b")]
        await settle()
        with pytest.raises(ResourceExhaustedError, match="queue is full"):
            await admission.enter(HOST, "c", 1, later())
        for waiter in waiters:  # no slot came free within queue_seconds: 429, never a time-out
            with pytest.raises(ResourceExhaustedError, match="no model host slot came free within 0.2 s"):
                await waiter
        with pytest.raises(ServingError, match="deadline") as late:
            await admission.enter(HOST, "a", 1, time.monotonic() + 0.05)
        assert late.value.code == 504
        assert queue.waiting == 0 and admission.load("a") == (0, 0) and admission.load("c") == (0, 0)

    asyncio.run(run())


def test_a_cancelled_wait_gives_back_its_place_and_a_cancel_that_races_a_grant_gives_back_the_slot() -> None:
    async def run() -> None:
        admission = Admission(AdmissionLimits(host_slots=1, tenant_requests=100))
        queue = admission.queue(HOST)
        first = await admission.enter(HOST, "a", 1, later())
        waiting = asyncio.create_task(admission.enter(HOST, "b", 1, later()))
        await settle()
        waiting.cancel()
        await asyncio.wait({waiting})
        assert queue.waiting == 0 and admission.load("b") == (0, 0)

        granted = asyncio.create_task(admission.enter(HOST, "b", 1, later()))
        await settle()
        admission.leave(first)  # the slot goes to the waiter...
        granted.cancel()  # ...which is cancelled before it runs again
        await asyncio.wait({granted})
        assert queue.running == 0 and admission.load("b") == (0, 0)
        admission.leave(first)  # leaving twice does nothing
        assert queue.running == 0

    asyncio.run(run())


class Unused:
    """A model host the test never calls (the app closes it on shutdown)."""

    def close(self) -> None:
        pass


class FakeRequest:
    """What ``deadline`` and ``until_disconnected`` read of a request."""

    def __init__(self, headers: dict[str, str] | None = None, disconnect_after: float = FAR) -> None:
        self.headers = headers or {}
        self.gone_at = time.monotonic() + disconnect_after

    async def is_disconnected(self) -> bool:
        return time.monotonic() >= self.gone_at


def test_a_client_that_disconnects_cancels_its_call_and_frees_its_slot() -> None:
    async def run() -> None:
        admission = Admission(AdmissionLimits(host_slots=1))
        cancelled = asyncio.Event()

        async def call() -> None:
            async with admission.admitted(HOST, "a", 1, later()):
                try:
                    await asyncio.sleep(FAR)  # a host that never answers
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

        started = time.monotonic()
        with pytest.raises(ApiError) as closed:
            await until_disconnected(FakeRequest(disconnect_after=0.1), call(), poll=0.02)  # type: ignore[arg-type]
        assert closed.value.status_code == 499 and cancelled.is_set() and time.monotonic() - started < 1
        assert admission.queue(HOST).running == 0 and admission.load("a") == (0, 0)
        assert await until_disconnected(FakeRequest(), asyncio.sleep(0, "done"), poll=0.02) == "done"  # type: ignore[arg-type]

    asyncio.run(run())


def test_the_clients_timeout_header_sets_the_deadline_within_the_servers_bound() -> None:
    limits = AdmissionLimits(max_request_seconds=60)
    now = time.monotonic()
    assert deadline(FakeRequest({"X-Request-Timeout": "2.5"}), limits) - now == pytest.approx(2.5, abs=0.5)  # type: ignore[arg-type]
    assert deadline(FakeRequest({"X-Request-Timeout": "9999"}), limits) - now == pytest.approx(60, abs=0.5)  # type: ignore[arg-type]
    assert deadline(FakeRequest(), limits) - now == pytest.approx(60, abs=0.5)  # type: ignore[arg-type]
    for bad in ("soon", "0", "-1", "nan", "inf"):
        with pytest.raises(ApiError) as refused:
            deadline(FakeRequest({"X-Request-Timeout": bad}), limits)  # type: ignore[arg-type]
        assert refused.value.status_code == 400 and "X-Request-Timeout" in str(refused.value.detail)


def test_a_calls_tokens_are_its_text_over_four_plus_its_output() -> None:
    assert estimate_tokens(body("x" * 400, 48)) == 100 + 48
    assert estimate_tokens(body("x" * 400)) == 100 + 256  # the model's default maxOutputTokens
    with_system = {**body("abcd", 8), "systemInstruction": {"parts": [{"text": "y" * 40}]}}
    assert estimate_tokens(with_system) == 1 + 10 + 8
    two = {**body("abcd"), "generationConfig": {"maxOutputTokens": 10, "candidateCount": 2}}
    assert estimate_tokens(two) == 1 + 20


def test_a_tenant_past_its_tuning_job_limit_gets_429_with_retry_after(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "config.json").write_text("{}")
    (root / "train.jsonl").write_bytes((DATA_DIR / "classify_gemini.jsonl").read_bytes())
    store = Store(f"sqlite:///{tmp_path / 'tunery.db'}")
    settings = ApiSettings(data_root=root, files_dir=tmp_path / "files", tuned_models_dir=tmp_path / "tuned")
    app = create_app(
        store=store, host=Unused(), checker=Unused(), settings=settings, admission=AdmissionLimits(tenant_jobs=2)
    )
    job = {"baseModel": "tiny", "supervisedTuningSpec": {"trainingDatasetUri": "train.jsonl"}}
    try:
        with TestClient(app, client=("127.0.0.1", 50000)) as client:
            created = [client.post("/v1/tuningJobs", json=job, headers={"Idempotency-Key": f"k{i}"}) for i in range(2)]
            assert [r.status_code for r in created] == [201, 201]
            refused = client.post("/v1/tuningJobs", json=job)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
            assert int(refused.headers["Retry-After"]) >= 1 and "2 tuning jobs" in refused.json()["error"]["message"]
            again = client.post(
                "/v1/tuningJobs", json=job, headers={"Idempotency-Key": "k1"}
            )  # a retry creates nothing
            assert again.status_code == 200 and again.json()["name"] == created[1].json()["name"]
            client.post(f"/v1/{created[0].json()['name']}:cancel").raise_for_status()  # PENDING: cancelled at once
            assert client.post("/v1/tuningJobs", json=job).status_code == 201
    finally:
        store.close()


def test_the_remote_sdk_waits_out_a_429_sends_its_timeout_and_gives_up_after_its_retries(monkeypatch) -> None:
    import httpx

    from tunery.sdk import client as remote

    slept: list[float] = []
    monkeypatch.setattr(remote.time, "sleep", slept.append)
    seen: list[httpx.Request] = []
    answers = [429, 429, 200]

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = answers.pop(0) if answers else 429
        if status == 429:
            error = {"error": {"code": 429, "message": "queue is full", "status": "RESOURCE_EXHAUSTED"}}
            return httpx.Response(429, json=error, headers={"Retry-After": "2"})
        return httpx.Response(200, json={"totalTokens": 3})

    sdk = remote.Client("http://tunery.test", timeout=7.5, retries=2, transport=httpx.MockTransport(reply))
    assert sdk.count_tokens("tiny", body()) == 3
    assert slept == [2.0, 2.0] and len(seen) == 3
    assert {r.headers["X-Request-Timeout"] for r in seen} == {"7.5"}
    slept.clear()
    with pytest.raises(ResourceExhaustedError, match="queue is full") as refused:
        sdk.generate_content("tiny", body())
    assert refused.value.retry_after == 2 and slept == [2.0, 2.0]  # 1 + 2 retries, then the error


def test_a_stream_holds_its_slot_until_its_last_chunk_and_is_refused_before_its_first() -> None:
    import threading
    from types import SimpleNamespace

    from tunery.api import generation
    from tunery.models.catalog import DEFAULT_MODEL

    class StreamingHost:
        async def astream(self, model: str, request: dict, **_: Any):
            for word in ("a", "b", "c"):
                yield {"candidates": [{"content": {"parts": [{"text": word}]}}]}

    admission = Admission(AdmissionLimits(host_slots=1, tenant_requests=1))
    host = StreamingHost()
    state = SimpleNamespace(
        admission=admission, host=host, host_lock=threading.Lock(), settings=ApiSettings(), store=None
    )
    request = FakeRequest()
    request.app = SimpleNamespace(state=state)  # type: ignore[attr-defined]

    async def run() -> None:
        chunks = generation.stream(request, "a", DEFAULT_MODEL, body())  # type: ignore[arg-type]
        first = await anext(chunks)  # admitted here, before any answer would go out
        assert first["candidates"][0]["content"]["parts"][0]["text"] == "a"
        assert admission.queue(host).running == 1
        with pytest.raises(ResourceExhaustedError):  # the tenant's one call is in flight
            await anext(generation.stream(request, "a", DEFAULT_MODEL, body()))  # type: ignore[arg-type]
        assert [c["candidates"][0]["content"]["parts"][0]["text"] async for c in chunks] == ["b", "c"]
        assert admission.queue(host).running == 0 and admission.load("a") == (0, 0)
        dropped = await generation.stream(request, "a", DEFAULT_MODEL, body())  # type: ignore[arg-type]
        await dropped.aclose()  # closed early: the slot is free again
        assert admission.queue(host).running == 0

    asyncio.run(run())
