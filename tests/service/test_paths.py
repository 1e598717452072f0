"""What a request may name by path: only files and model directories inside the data root.

.venv/bin/python -m pytest tests/service/test_paths.py -x -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunery.api.paths import file_id, resolve_base_model, resolve_dataset, resolve_under
from tunery.errors import ConfigError
from tunery.jobs.store import Store, StoredFile, new_id, now

FIELD = "supervisedTuningSpec.trainingDatasetUri"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sets").mkdir(parents=True)
    (root / "sets" / "train.jsonl").write_text("{}\n")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    (root / "empty-dir").mkdir()
    (tmp_path / "secret.jsonl").write_text("{}\n")
    (tmp_path / "outside-model").mkdir()
    (tmp_path / "outside-model" / "config.json").write_text("{}")
    return root


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'paths.db'}")
    yield store
    store.close()


def upload(store: Store, tenant: str, tmp_path: Path) -> StoredFile:
    record = StoredFile(new_id(), tenant, "t.jsonl", str(tmp_path / "up.jsonl"), 3, "0" * 64, 1, "m", {}, now())
    return store.add_file(record)


@pytest.mark.parametrize(
    "ref",
    [
        "sets/train.jsonl",
        "./sets/train.jsonl",
        "sets//train.jsonl",
        "{root}/sets/train.jsonl",
        "file://{root}/sets/train.jsonl",
    ],
)
def test_paths_inside_the_root_resolve_to_their_absolute_path(root: Path, store: Store, ref: str) -> None:
    path, record = resolve_dataset(ref.format(root=root), "t", store, root, FIELD)
    assert path == str((root / "sets" / "train.jsonl").resolve()) and record is None


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("../secret.jsonl", "'..' is not allowed"),
        ("sets/../../secret.jsonl", "'..' is not allowed"),
        ("sets/../sets/train.jsonl", "'..' is not allowed"),  # refused even where it would stay inside
        ("{parent}/secret.jsonl", "outside the data root"),
        ("/etc/passwd", "outside the data root"),
        ("file://{parent}/secret.jsonl", "outside the data root"),
        ("file://otherhost/{root}/sets/train.jsonl", "must name a local path"),
        ("gs://bucket/train.jsonl", "only uploaded file ids"),
        ("https://example.com/train.jsonl", "only uploaded file ids"),
        ("sets/missing.jsonl", "not a file under the data root"),
        ("empty-dir", "not a file under the data root"),
        ("sets/train.jsonl\x00.txt", "not a path"),
        ("a" * 5000, "not a file under the data root"),
        ("x/" * 3000 + "y", "not a file under the data root"),
        ("   ", "not a path"),
    ],
)
def test_paths_that_could_leave_the_root_or_do_not_exist_are_refused(
    root: Path, store: Store, ref: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        resolve_dataset(ref.format(root=root, parent=root.parent), "t", store, root, FIELD)
    assert str(caught.value).startswith(FIELD)


def test_a_symlink_is_followed_only_where_it_stays_inside(root: Path, store: Store) -> None:
    os.symlink(root.parent / "secret.jsonl", root / "leak.jsonl")
    os.symlink(root.parent, root / "up")
    os.symlink(root / "sets" / "train.jsonl", root / "alias.jsonl")
    for ref in ("leak.jsonl", "up/secret.jsonl"):
        with pytest.raises(ConfigError, match="outside the data root"):
            resolve_dataset(ref, "t", store, root, FIELD)
    path, _ = resolve_dataset("alias.jsonl", "t", store, root, FIELD)
    assert path == str(root / "sets" / "train.jsonl")


def test_a_root_that_is_itself_a_symlink_still_holds_its_files(tmp_path: Path, root: Path, store: Store) -> None:
    os.symlink(root, tmp_path / "link-root")
    path, _ = resolve_dataset("sets/train.jsonl", "t", store, tmp_path / "link-root", FIELD)
    assert path == str(root / "sets" / "train.jsonl")


def test_without_a_data_root_only_file_ids_are_accepted(tmp_path: Path, store: Store) -> None:
    with pytest.raises(ConfigError, match="uploaded file ids only"):
        resolve_dataset("train.jsonl", "t", store, None, FIELD)
    record = upload(store, "t", tmp_path)
    assert resolve_dataset(f"files/{record.id}", "t", store, None, FIELD) == (record.path, record)
    assert resolve_dataset(record.id, "t", store, None, FIELD)[0] == record.path


def test_a_file_id_names_the_callers_own_uploads_only(tmp_path: Path, store: Store) -> None:
    record = upload(store, "alice", tmp_path)
    for ref in (f"files/{record.id}", record.id, "files/nope"):
        with pytest.raises(ConfigError, match="not found"):
            resolve_dataset(ref, "bob", store, None, FIELD)


def test_file_ids_and_paths_are_told_apart() -> None:
    assert file_id("files/abc") == "abc"
    assert file_id("20250101120000abcdef012345") == "20250101120000abcdef012345"
    assert file_id("train.jsonl") is None and file_id("2025/train.jsonl") is None


def test_a_base_model_is_a_catalog_id_or_a_model_directory_inside_the_root(root: Path) -> None:
    assert resolve_base_model("smollm2-135m-instruct", None) == "smollm2-135m-instruct"
    assert resolve_base_model("model", root) == str(root / "model")
    assert resolve_base_model(f"file://{root}/model", root) == str(root / "model")
    for ref, says in [
        ("empty-dir", "neither a catalog model"),
        ("../outside-model", "'..' is not allowed"),
        (str(root.parent / "outside-model"), "outside the data root"),
        ("nope", "neither a catalog model"),
    ]:
        with pytest.raises(ConfigError, match=says):
            resolve_base_model(ref, root)
    with pytest.raises(ConfigError, match="not a catalog model"):
        resolve_base_model("model", None)


def test_resolve_under_returns_a_path_inside_the_resolved_root(root: Path) -> None:
    assert resolve_under(root, "sets/new.jsonl", "f") == root.resolve() / "sets" / "new.jsonl"
