"""The official clients (google-genai, google-cloud-aiplatform, openai) against a real ``tunery serve``.

One server for the whole folder (``server``): a uvicorn subprocess on an ephemeral loopback port, with its own
``$TUNERY_HOME`` and a data root holding the tiny model (``tiny/``) and the JSONL fixtures, built by the
service tests' ``Service``. ``key`` is an API key of a tenant of the module's own (``clients-<module>``), so
the modules' jobs and files stay apart. A test module skips, with the
reason, when its client library is not installed (``bash scripts/install.sh test`` installs them).

    .venv/bin/python -m pytest tests/clients -x -q
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from client_helpers import Service


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_train: Callable[..., Path]) -> Iterator:
    svc = Service(tmp_path_factory.mktemp("clients"), tiny_model, make_train(20), 1, None)
    # the clients upload without naming a model: count with the tiny model's tokenizer rather than convert the
    # catalog's default model (a minute) in every server
    svc.env["TUNERY_UPLOAD_MODEL"] = "tiny"
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture(scope="module")
def key(server, request: pytest.FixtureRequest) -> str:
    secret = server.create_key("clients-" + request.module.__name__.removeprefix("test_").replace("_", "-"))
    time.sleep(1.1)  # the server asks whether keys exist at most once a second
    return secret
