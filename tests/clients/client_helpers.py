"""Helpers for the client tests (importable by name: ``from client_helpers import wait_for``)."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SERVICE_CONFTEST = Path(__file__).resolve().parents[1] / "service" / "conftest.py"
TINY_EPOCHS = 3
TINY_RATE = 20.0  # times the base rate: the tiny model learns the fixture's labels in 3 epochs


def _service_class() -> type:
    """The service tests' ``Service`` (a real ``tunery serve`` subprocess), loaded without registering their
    fixtures a second time."""
    spec = importlib.util.spec_from_file_location("_tunery_service_conftest", SERVICE_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Service


Service = _service_class()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 180, every: float = 0.3) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout} s")
        time.sleep(every)
