"""A request's ``fileData`` parts read before the model host sees them (#15, ``tunery.api.generation.with_media``):
the caller's own media uploads by ``files/{id}``, paths under the data root; never another tenant's upload, a
dataset, a path out of the root or a remote URL.

    .venv/bin/python -m pytest tests/unit/test_media_requests.py -q
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tunery.api.errors import ApiError
from tunery.api.generation import with_media
from tunery.api.limits import ApiSettings
from tunery.jobs.store import Store, StoredFile, new_id, now

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32 + b"IEND\xaeB`\x82"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32 + b"\xff\xd9"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Store, ApiSettings, str, str]:
    store = Store(f"sqlite:///{tmp_path / 'tunery.db'}")
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(JPEG)
    (tmp_path / "outside.png").write_bytes(PNG)
    settings = ApiSettings(data_root=root, files_dir=tmp_path / "files", tuned_models_dir=tmp_path / "tuned")
    image = tmp_path / "files" / "media" / "x" / "img"
    image.parent.mkdir(parents=True)
    image.write_bytes(PNG)
    media = StoredFile(new_id(), "alice", "red.png", str(image), len(PNG), "", 0, "", {"mimeType": "image/png"}, now())
    dataset = StoredFile(new_id(), "alice", "t.jsonl", str(image), 1, "", 2, "tiny", {}, now())
    store.add_file(media)
    store.add_file(dataset)
    return store, settings, media.id, dataset.id


def body(*uris: tuple[str, str]) -> dict:
    parts = [{"fileData": {"mimeType": mime, "fileUri": uri}} for mime, uri in uris]
    return {"contents": [{"role": "user", "parts": [*parts, {"text": "colour?"}]}]}


def test_uploads_and_data_root_paths_become_inline_data(setup) -> None:
    store, settings, media, _ = setup
    given = body(
        ("image/png", f"files/{media}"), ("application/octet-stream", f"files/{media}"), ("image/jpeg", "img/a.jpg")
    )
    out = with_media(given, "alice", store, settings)
    parts = out["contents"][0]["parts"]
    assert parts[0] == parts[1] == {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}}
    assert parts[2] == {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(JPEG).decode()}}
    assert parts[3] == {"text": "colour?"}
    assert given["contents"][0]["parts"][0]["fileData"]["fileUri"] == f"files/{media}"  # the caller's body is kept
    own = body(("image/png", f"http://127.0.0.1:8000/v1beta/files/{media}"))  # the Gemini File's uri
    assert with_media(own, "alice", store, settings, "http://127.0.0.1:8000/")["contents"][0]["parts"][0] == parts[0]
    with pytest.raises(ApiError, match="not fetched"):  # another server's file
        with_media(body(("image/png", f"http://other:8000/v1beta/files/{media}")), "alice", store, settings, "x")


def test_what_is_not_the_callers_media_is_named_by_part(setup, tmp_path: Path) -> None:
    store, settings, media, dataset = setup
    given = body(
        ("image/png", f"files/{media}"),  # bob's request: alice's upload is not found
        ("image/png", f"files/{dataset}"),
        ("image/png", "../outside.png"),
        ("image/png", str(tmp_path / "outside.png")),
        ("image/png", "https://example.com/a.png"),
        ("image/png", "img/a.jpg"),
    )
    with pytest.raises(ApiError) as caught:
        with_media(given, "bob", store, settings)
    found = {v["field"]: v["description"] for v in caught.value.details[0]["fieldViolations"]}
    assert len(found) == 6
    field = "contents[0].parts[{}].fileData.{}".format
    assert "not found" in found[field(0, "fileUri")] and "not found" in found[field(1, "fileUri")]
    assert "'..' is not allowed" in found[field(2, "fileUri")]
    assert "outside the data root" in found[field(3, "fileUri")]
    assert "not fetched" in found[field(4, "fileUri")]
    assert "declared image/png but img/a.jpg is image/jpeg" in found[field(5, "mimeType")]
    with pytest.raises(ApiError, match="is a JSONL dataset"):
        with_media(body(("image/png", f"files/{dataset}")), "alice", store, settings)


def test_url_safe_unpadded_base64_is_made_standard() -> None:
    from tunery.api.generation import standard_base64

    raw = bytes(range(250, 256)) + b"\xfb\xff"  # encodes with '+' and '/' in standard base64
    standard = base64.b64encode(raw).decode()
    url_safe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in url_safe or "_" in url_safe
    given = {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": url_safe}}]}]}
    assert standard_base64(given)["contents"][0]["parts"][0]["inlineData"]["data"] == standard
    kept = {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": standard}}]}]}
    assert standard_base64(kept) is kept
