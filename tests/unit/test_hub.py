"""Base models by Hugging Face Hub id, from a Hub cache this test writes itself (blobs/snapshots/refs), offline.

.venv/bin/python -m pytest tests/unit/test_hub.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tunery.errors import ModelError
from tunery.models.catalog import CATALOG, FULL, PEFT_ADAPTER
from tunery.models.sources import is_hub_id, resolve_base
from tunery.models.tuned import load_tuned
from tunery.tuning import TuningSpec, tune

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_cache(hub: Path, repo: str, source: Path, commit: str = COMMIT, skip: tuple[str, ...] = ()) -> Path:
    """The layout huggingface_hub keeps: blobs named by hash, a snapshot of links to them, refs/main → commit."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        if file.name in skip:
            continue
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, root / "blobs" / digest)
        os.symlink(os.path.relpath(root / "blobs" / digest, snapshot), snapshot / file.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def test_a_hub_id_tunes_offline_and_records_its_revision_and_hashes(hub, tiny_model, make_train, tmp_path):
    snapshot = write_cache(hub, "tiny-org/tiny-chat", tiny_model)
    for name in ("tiny-org/tiny-chat", "tiny-org/tiny-chat@main", f"tiny-org/tiny-chat@{COMMIT}"):
        base = resolve_base(name)
        assert base.path == snapshot and base.revision == COMMIT
    out = tune(
        TuningSpec(train=str(make_train(8)), base_model="tiny-org/tiny-chat", epochs=1, output=str(tmp_path / "t"))
    )
    recorded = json.loads((out / "tunery.json").read_text())["baseModel"]
    assert recorded["id"] == "tiny-org/tiny-chat" and recorded["revision"] == COMMIT
    expected = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in tiny_model.iterdir()}
    assert recorded["files"] == expected
    model, _ = load_tuned(out)  # the adapter finds its base again through the cache
    assert model.peft_config["default"].base_model_name_or_path == str(snapshot)


def test_a_repo_with_only_pickled_weights_is_refused_with_the_reason(hub, tiny_model, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    write_cache(hub, "tiny-org/pickled", pickled)
    with pytest.raises(ModelError, match=r"only pickled weights \(pytorch_model.bin\).*safetensors only"):
        resolve_base("tiny-org/pickled")


def test_offline_a_model_not_in_the_cache_is_refused_without_a_download(hub):
    with pytest.raises(ModelError, match=r"not in the Hub cache .*HF_HUB_OFFLINE"):
        resolve_base("tiny-org/absent")
    with pytest.raises(ModelError, match="Qwen/Qwen2.5-0.5B-Instruct"):
        resolve_base("qwen2.5-0.5b-instruct")  # a catalog Hub entry resolves through the Hub too


def test_hub_ids_are_not_paths(tmp_path):
    assert is_hub_id("Qwen/Qwen2.5-0.5B-Instruct") and is_hub_id("org/name@v1.0")
    for name in ("./org/name", "/abs/path", "../x/y", "a/b/c", "org/..", "~/x"):
        assert not is_hub_id(name), name


def test_gpu_catalog_entries_describe_context_modalities_rates_and_memory():
    wanted = {
        "Qwen/Qwen2.5-0.5B-Instruct",
        "Qwen/Qwen2.5-1.5B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct",
        "meta-llama/Llama-3.2-1B-Instruct",
        "meta-llama/Llama-3.2-3B-Instruct",
        "google/gemma-3-1b-it",
        "google/gemma-3-4b-it",
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "HuggingFaceTB/SmolVLM-256M-Instruct",  # #15: the multimodal small and large roles
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "Qwen/Qwen2-Audio-7B-Instruct",  # the audio role
    }
    entries = [e for e in CATALOG.values() if e.hub]
    assert {e.hub for e in entries} == wanted
    for entry in entries:
        info = entry.to_dict()
        assert info["contextLength"] >= 8192 and "text" in info["modalities"]
        assert set(info["defaultLearningRates"]) == {PEFT_ADAPTER, FULL}
        memory = info["memoryGiB"]
        assert memory["QLORA"] < memory[PEFT_ADAPTER] < memory[FULL]  # what each method needs, in order
    assert CATALOG["gemma-3-4b-it"].modalities == ("text", "image")
    assert CATALOG["smolvlm-256m-instruct"].role == "multimodal small"
    assert CATALOG["qwen2.5-vl-3b-instruct"].role == "multimodal large"
    assert CATALOG["qwen2.5-vl-3b-instruct"].modalities == ("text", "image")
    assert CATALOG["qwen2-audio-7b-instruct"].modalities == ("text", "audio")
    assert CATALOG["qwen2-audio-7b-instruct"].role == "audio"
    assert CATALOG["smollm2-135m-instruct"].role == "text"
