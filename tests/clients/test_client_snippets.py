"""The "Use your existing client" snippets (docs/clients.md, linked from the README), each run as written
against a real ``tunery serve``.

The snippets are taken from docs/clients.md itself; the test changes only what a reader would: the address and
key line, the base model (the tiny model instead of the catalog's), the polling interval, and runs them in a
folder holding ``train.jsonl`` (also under the server's data root, where the Vertex AI snippet names it).

    .venv/bin/python -m pytest tests/clients/test_client_snippets.py -x -q
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
TITLE = "# Use your existing client"
ADDRESS_LINE = 'URL, KEY = "http://localhost:8080", "tk_..."'

pytestmark = [
    pytest.mark.filterwarnings("ignore:The SDK's tuning implementation is experimental"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


def snippets() -> dict[str, str]:
    """The page's Python blocks, by the client each imports."""
    assert PAGE.is_file(), f"{PAGE} is missing: the client snippets this test runs live there"
    text = PAGE.read_text()
    assert text.startswith(TITLE + "\n"), f"{PAGE} does not open with {TITLE!r}: is it still the clients page?"
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = {}
    for block in blocks:
        for name, module in (
            ("google-genai", "from google import genai"),
            ("vertexai", "import vertexai"),
            ("openai", "from openai import OpenAI"),
        ):
            if module in block:
                found[name] = block
    assert set(found) == {"google-genai", "vertexai", "openai"}, f"{PAGE.name} has snippets for {sorted(found)} only"
    return found


@pytest.mark.parametrize("name", ["google-genai", "vertexai", "openai"])
def test_snippet_runs(name: str, server, key, tmp_path, monkeypatch) -> None:
    pytest.importorskip({"google-genai": "google.genai", "vertexai": "vertexai", "openai": "openai"}[name])
    code = snippets()[name]
    assert ADDRESS_LINE in code and "smollm2-135m-instruct" in code and "time.sleep(10)" in code
    code = code.replace(ADDRESS_LINE, f"URL, KEY = {server.url!r}, {key!r}")
    code = code.replace('"smollm2-135m-instruct"', '"tiny"').replace("time.sleep(10)", "time.sleep(0.3)")
    train = server.data_root / "classify_openai.jsonl"
    shutil.copy(train, tmp_path / "train.jsonl")
    shutil.copy(train, server.data_root / "train.jsonl")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    namespace: dict[str, object] = {"__name__": f"readme_{name}"}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"docs/clients.md ({name})", "exec"), namespace)  # noqa: S102 - the page's own code
    job = namespace["job"]
    state = getattr(job, "status", None) or getattr(getattr(job, "state", None), "name", None)
    if name == "vertexai":
        assert job.has_succeeded, job.error
    else:
        assert state in ("succeeded", "JOB_STATE_SUCCEEDED"), job
