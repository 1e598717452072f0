"""google-genai, unmodified, with media (#15): ``files.upload`` of a PNG (the resumable protocol), then
``models.generate_content`` with ``Part.from_uri(file_uri=uploaded.uri)`` answers as ``Part.from_bytes`` does, on a
tiny Qwen2-VL (tests/unit/test_vlm_tuning.py's builder) served as a fully tuned model of this module's tenant.

    .venv/bin/python -m pytest tests/clients/test_genai_media.py -x -q
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest

genai = pytest.importorskip("google.genai", reason="google-genai is not installed (bash scripts/install.sh test)")
pytest.importorskip("PIL")
from google.genai import errors, types  # noqa: E402

from tunery.jobs.store import TunedModel, new_id, now  # noqa: E402

BUILDERS = Path(__file__).resolve().parents[1] / "unit" / "test_vlm_tuning.py"
BLUE = (30, 40, 220)
GREEDY = types.GenerateContentConfig(temperature=0, max_output_tokens=4)


def _builders():
    spec = importlib.util.spec_from_file_location("_vlm_builders", BUILDERS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vlm = _builders()


@pytest.fixture(scope="module")
def model(server, key) -> str:
    path = server.data_root / "vlm-genai"
    built, processor = vlm.qwen2_vl()
    built.save_pretrained(path)
    processor.save_pretrained(path)
    record = TunedModel(new_id(), "clients-genai-media", new_id(), "vlm", "vlm", "FULL", str(path), now())
    server.store.add_tuned_model(record)
    return record.id


@pytest.fixture(scope="module")
def client(server, key):
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=server.url))


def test_an_uploaded_image_by_its_uri_answers_as_its_bytes_do(client, model: str, tmp_path: Path) -> None:
    png = base64.b64decode(vlm.png(BLUE))
    path = tmp_path / "blue.png"
    path.write_bytes(png)
    uploaded = client.files.upload(file=str(path))
    assert uploaded.mime_type == "image/png" and uploaded.size_bytes == len(png)
    assert uploaded.state == types.FileState.ACTIVE

    by_uri = client.models.generate_content(
        model=model,
        contents=[types.Part.from_uri(file_uri=uploaded.uri, mime_type="image/png"), vlm.PROMPT],
        config=GREEDY,
    )
    by_bytes = client.models.generate_content(
        model=model, contents=[types.Part.from_bytes(data=png, mime_type="image/png"), vlm.PROMPT], config=GREEDY
    )
    assert by_uri.text == by_bytes.text
    assert by_uri.usage_metadata.prompt_token_count == by_bytes.usage_metadata.prompt_token_count
    counted = client.models.count_tokens(
        model=model, contents=[types.Part.from_uri(file_uri=uploaded.uri, mime_type="image/png"), vlm.PROMPT]
    )
    assert counted.total_tokens == by_bytes.usage_metadata.prompt_token_count

    client.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(
            model=model, contents=[types.Part.from_uri(file_uri=uploaded.uri, mime_type="image/png"), vlm.PROMPT]
        )
    assert caught.value.code == 400 and "not found" in str(caught.value)
