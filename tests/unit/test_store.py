"""The job store on SQLite and on a real PostgreSQL: migrations, jobs, idempotency, tenants, events, keys.

.venv/bin/python -m pytest tests/unit/test_store.py -x -q
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from tunery.errors import ConflictError, JobError, NotFoundError
from tunery.jobs.migrations import MIGRATIONS, migrate
from tunery.jobs.store import (
    CANCELLED,
    CANCELLING,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Store,
    StoredFile,
    TunedModel,
    now,
)
from tunery.tuning.spec import TuningSpec


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = Store(url)
    yield opened
    opened.close()


def spec(**kwargs) -> TuningSpec:
    return TuningSpec(train="/data/train.jsonl", output="/out/x", **kwargs)


def body(n: int = 0) -> dict:
    return {"baseModel": "smollm2-135m-instruct", "supervisedTuningSpec": {"trainingDatasetUri": f"files/{n}"}}


def test_migrations_run_once_in_order_and_reopening_changes_nothing(store):
    with store.engine.connect() as conn:
        names = [row[0] for row in conn.execute(text("SELECT name FROM tunery_migrations ORDER BY name"))]
    assert names == [name for name, _ in MIGRATIONS]
    assert migrate(store.engine) == []
    reopened = Store(store.url)
    assert reopened.list_jobs("t") == ([], None)
    reopened.close()


def test_create_read_and_resource_shape(store):
    job, created = store.create_job("acme", spec(display_name="router", labels={"team": "risk"}), body())
    assert created and job.state == PENDING
    resource = store.get_job("acme", job.id).resource()
    assert resource["name"] == f"tuningJobs/{job.id}"
    assert resource["tunedModelDisplayName"] == "router" and resource["labels"] == {"team": "risk"}
    assert resource["supervisedTuningSpec"] == {"trainingDatasetUri": "files/0"}
    assert resource["createTime"].endswith("Z") and "startTime" not in resource and "error" not in resource
    assert [e["data"]["state"] for e in store.events("acme", job.id)] == [PENDING]


def test_another_tenant_sees_nothing(store):
    job, _ = store.create_job("acme", spec(), body())
    with pytest.raises(NotFoundError):
        store.get_job("globex", job.id)
    with pytest.raises(NotFoundError):
        store.request_cancel("globex", job.id)
    with pytest.raises(NotFoundError):
        store.events("globex", job.id)
    assert store.list_jobs("globex") == ([], None)


def test_idempotency_key_returns_the_first_job_and_refuses_another_body(store):
    first, created = store.create_job("acme", spec(), body(1), idempotency_key="k1")
    again, created_again = store.create_job("acme", spec(), body(1), idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(ConflictError, match="k1"):
        store.create_job("acme", spec(), body(2), idempotency_key="k1")
    other, created_other = store.create_job("globex", spec(), body(1), idempotency_key="k1")  # keys are per tenant
    assert created_other and other.id != first.id


def test_concurrent_creates_with_one_key_make_one_job(store):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.create_job("acme", spec(), body(), idempotency_key="race"), range(8)))
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_list_filters_by_state_and_label_and_pages_newest_first(store):
    ids = [store.create_job("acme", spec(labels={"n": str(i % 2)}), body(i))[0].id for i in range(7)]
    store.update_job(ids[0], state=SUCCEEDED)
    pages, token = [], None
    while True:
        page, token = store.list_jobs("acme", page_size=3, page_token=token)
        pages.append([job.id for job in page])
        if token is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1] and sum(pages, []) == ids[::-1]
    assert [job.id for job in store.list_jobs("acme", state=SUCCEEDED)[0]] == [ids[0]]
    assert [job.id for job in store.list_jobs("acme", labels={"n": "1"})[0]] == [ids[5], ids[3], ids[1]]
    assert len(store.list_jobs("acme", labels={"n": "0"}, page_size=2)[0]) == 2
    with pytest.raises(JobError, match="state"):
        store.list_jobs("acme", state="DONE")
    with pytest.raises(JobError, match="pageToken"):
        store.list_jobs("acme", page_token="x'; drop table jobs")


def test_cancel_a_queued_job_ends_it_and_a_running_one_is_cancelling(store):
    queued, _ = store.create_job("acme", spec(), body(1))
    assert store.request_cancel("acme", queued.id).state == CANCELLED
    running, _ = store.create_job("acme", spec(), body(2))
    store.claim_job(running.id, "server@x", 4242)
    job = store.request_cancel("acme", running.id)
    assert job.state == RUNNING and job.cancel_requested and job.resource()["state"] == CANCELLING
    assert [j.id for j in store.list_jobs("acme", state=CANCELLING)[0]] == [running.id]
    store.update_job(running.id, state=CANCELLED)
    ended = store.request_cancel("acme", running.id)  # cancelling an ended job changes nothing
    assert ended.state == CANCELLED and ended.end_time


def test_claim_never_reopens_an_ended_job_and_runnable_order(store):
    a, _ = store.create_job("acme", spec(), body(1))
    b, _ = store.create_job("acme", spec(), body(2))
    c, _ = store.create_job("acme", spec(), body(3), owner="embedded")
    store.claim_job(b.id, "server@x", 1)
    assert [j.id for j in store.runnable_jobs(["server@x"])] == [b.id, a.id]  # a lost RUNNING job first
    assert c.id not in [j.id for j in store.runnable_jobs(["server@y"])]
    store.update_job(a.id, state=SUCCEEDED)
    assert store.claim_job(a.id, "server@x", 2).state == SUCCEEDED


def test_events_are_ordered_and_paged_by_sequence(store):
    job, _ = store.create_job("acme", spec(), body())
    for step in range(1, 6):
        store.add_event(job.id, "metrics", None, {"step": step})
    events = store.events("acme", job.id)
    assert [e["data"].get("step") for e in events] == [None, 1, 2, 3, 4, 5]
    after = store.events("acme", job.id, after=events[2]["id"], limit=2)
    assert [e["data"]["step"] for e in after] == [3, 4]


def test_files_and_tuned_models_belong_to_their_tenant(store):
    record = StoredFile("f1", "acme", "train.jsonl", "/files/f1.jsonl", 10, "ab" * 32, 3, "m", {"a": 1}, now())
    store.add_file(record)
    assert store.get_file("acme", "f1").resource()["exampleCount"] == 3
    assert [f.id for f in store.list_files("acme")] == ["f1"] and store.list_files("globex") == []
    with pytest.raises(NotFoundError):
        store.delete_file("globex", "f1")
    store.delete_file("acme", "f1")
    with pytest.raises(NotFoundError):
        store.get_file("acme", "f1")
    model = TunedModel("m1", "acme", "j1", "router", "base", "PEFT_ADAPTER", "/tuned/m1", now())
    store.add_tuned_model(model)
    store.add_tuned_model(model)  # a retried worker records it again: no error, one row
    assert [m.id for m in store.list_tuned_models("acme")] == ["m1"]
    with pytest.raises(NotFoundError):
        store.get_tuned_model("globex", "m1")
    assert store.delete_tuned_model("acme", "m1").path == "/tuned/m1"


def test_api_keys_store_only_a_hash_and_match_exactly(store):
    assert not store.has_keys()
    key = store.create_key("acme")
    assert store.has_keys() and store.tenant_for_key(key) == "acme"
    with store.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys")) for v in row)
    assert key.split("_", 2)[2] not in stored
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "tk_nope_nope", "", "Bearer " + key):
        assert store.tenant_for_key(wrong) is None
    with pytest.raises(JobError, match="tenant"):
        store.create_key("bad tenant!")
