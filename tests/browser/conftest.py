"""Browser tests of the console: Debian's headless Chromium, driven by Playwright, against a real ``tunery serve``.

One server per module (tests/service/conftest.py's ``Service``: its own ``$TUNERY_HOME``, a data root with the
tiny model and the JSONL fixtures) with two tenants' keys; one Chromium per session with a fresh profile. Each
test gets a new tab (its own sessionStorage, so it signs in anew); a failing test leaves a screenshot of its
tab in ``$TUNERY_BROWSER_ARTIFACTS`` (default ``<tmp>/tunery-browser-failures``). Playwright's own browser
downloads are never used: ``executable_path`` is /usr/bin/chromium (``bash scripts/install.sh test``).
axe-core (installed by the same script from npm into ``.venv/share/axe-core``) scans each page.

    .venv/bin/python -m pytest tests/browser -x -q
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from console_tab import LAPTOP, Tab

CHROMIUM = os.environ.get("TUNERY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TUNERY_BROWSER_ARTIFACTS", Path(tempfile.gettempdir()) / "tunery-browser-failures"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _load_service_module() -> Any:
    path = Path(__file__).resolve().parents[1] / "service" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tunery_service_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Service = _load_service_module().Service


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if report.when == "call":
        item.stash.setdefault(FAILED, report.failed)  # type: ignore[attr-defined]
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium (a fresh profile) per module; skipped with a reason when it is missing. Not per
    session: Playwright's sync API keeps an asyncio loop running in this thread while it is open, and later
    tests that call ``asyncio.run`` would find it."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: 'bash scripts/install.sh test' installs Debian's chromium")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is in the test extra: pip install '.[test]'"
    )
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=ARGS, headless=True, viewport=LAPTOP, accept_downloads=False
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_train: Callable[..., Path]) -> Iterator:
    """A real ``tunery serve`` (one worker) with keys for tenants ``acme`` and ``rival``."""
    svc = Service(tmp_path_factory.mktemp("console"), tiny_model, make_train(400, words=6), 1, None)
    svc.start()
    svc.keys = {"acme": svc.create_key("acme"), "rival": svc.create_key("rival")}
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def tab(browser_context: Any, server: Any, request: pytest.FixtureRequest) -> Iterator[Tab]:
    page = browser_context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    tab = Tab(page, server)
    try:
        yield tab
    finally:
        if request.node.stash.get(FAILED, False):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / f"{request.node.name}.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
                sys.stderr.write(f"\nscreenshot of the failing tab: {shot}\n")
            except Exception as exc:  # a crashed tab cannot be photographed; the failure says why anyway
                sys.stderr.write(f"\nno screenshot ({exc})\n")
        page.close()


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A folder for the files a test uploads through the page."""
    folder = tmp_path_factory.mktemp("uploads")
    shutil.copy(data_dir / "classify_gemini.jsonl", folder / "tickets.jsonl")
    shutil.copy(data_dir / "bad" / "mixed.jsonl", folder / "mixed.jsonl")
    return folder
