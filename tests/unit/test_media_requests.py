"""A request's ``fileData`` parts read before the model host sees them (#15, ``tunery.api.generation.with_media``):
the caller's own media uploads by ``files/{id}``, paths under the data root; never another tenant's upload, a
dataset, a path out of the root or a remote URL.

    .venv/bin/python -m pytest tests/unit/test_media_requests.py -q
"""

from __future__ import annotations

import base64
import io
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


class NoChecker:
    """A dataset checker that a media upload must never reach."""

    def validate(self, *args: object, **kwargs: object) -> dict:
        raise AssertionError("a media upload went to the dataset checker")

    def close(self) -> None:
        pass


def test_media_uploads_are_typed_by_their_bytes_and_held_to_limits(tmp_path: Path, monkeypatch) -> None:
    from fastapi.testclient import TestClient
    from PIL import Image

    from tunery.api import uploads
    from tunery.api.app import create_app

    settings = ApiSettings(data_root=tmp_path, files_dir=tmp_path / "files", tuned_models_dir=tmp_path / "tuned")
    store = Store(f"sqlite:///{tmp_path / 'tunery.db'}")
    app = create_app(store=store, host=NoChecker(), checker=NoChecker(), settings=settings)
    client = TestClient(app, client=("127.0.0.1", 50000))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 24), (1, 2, 3)).save(buffer, "PNG")
    png = buffer.getvalue()

    def upload(content: bytes, name: str = "x.bin", **fields: str):
        return client.post("/v1/files", files={"file": (name, content)}, data=fields)

    kept = upload(png, "photo.jpg")  # the name says JPEG; the bytes decide
    assert kept.status_code == 201, kept.text
    record = kept.json()
    assert (record["mimeType"], record["purpose"], record["bytes"]) == ("image/png", "vision", len(png))
    assert record["supervisedTuningDataStats"] == {
        "mimeType": "image/png",
        "purpose": "vision",
        "modality": "image",
        "width": 40,
        "height": 24,
        "frames": 1,
    }
    path = Path(store.get_file("default", record["id"]).path)
    assert path.read_bytes() == png and path.is_relative_to(settings.files_dir / "media")
    assert [f["mimeType"] for f in client.get("/v1/files").json()["files"]] == ["image/png"]

    def problem(response) -> str:
        assert response.status_code == 400, response.text
        return response.json()["error"]["message"]

    assert "the bytes are image/png" in problem(upload(png, purpose="fine-tune"))
    assert "'vision' takes an image" in problem(
        upload(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 28, purpose="vision")
    )
    assert "expected an image" in problem(upload(b'{"contents": []}\n', purpose="vision"))
    assert "truncated image/png" in problem(upload(png[:-12]))
    assert uploads.media_type(_written(tmp_path / "u16.jsonl", '{"contents": []}\n'.encode("utf-16"))) is None
    assert "video/mp4 uploads are not supported" in problem(upload(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 40))
    monkeypatch.setitem(uploads.MEDIA_BYTES, "image", len(png) - 1)
    assert f"{len(png)} bytes; an upload of image takes at most" in problem(upload(png))
    assert client.delete(f"/v1/files/{record['id']}").status_code == 200
    assert not path.exists()
    assert sorted(p.name for p in settings.files_dir.rglob("*") if p.is_file()) == []  # nothing refused is kept


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path
