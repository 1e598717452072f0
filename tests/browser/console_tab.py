"""A browser tab on the console for the browser tests (tests/browser/conftest.py makes one per test)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

AXE_JS = Path(os.environ.get("TUNERY_AXE_JS", Path(sys.prefix) / "share" / "axe-core" / "axe.min.js"))
LAPTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}


class Tab:
    """One browser tab on the console, with what it logged (console errors, CSP reports, page errors)."""

    def __init__(self, page: Any, server: Any) -> None:
        self.page = page
        self.server = server
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: Any) -> None:
        # a 4xx the test asked for is logged by Chromium as a failed load; the page shows it in its own words
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console.{message.type}: {message.text}")

    def open(self, hash_: str = "") -> Any:
        self.page.goto(f"{self.server.url}/{hash_}")
        return self.page

    def sign_in(self, tenant: str = "acme", remember: bool = False) -> Any:
        page = self.open()
        page.get_by_label("API key").fill(self.server.keys[tenant])
        if remember:
            page.get_by_label("Keep the key for this tab").check()
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("navigation", name="Console").wait_for()
        return page

    def go(self, hash_: str) -> Any:
        self.page.evaluate("h => { location.hash = h }", hash_)
        self.page.wait_for_function("h => location.hash === h", arg=hash_)
        return self.page

    def axe(self, name: str) -> None:
        """No serious or critical axe-core violation on the page as it is now."""
        if not AXE_JS.is_file():
            pytest.skip(f"axe-core is not installed at {AXE_JS}: 'bash scripts/install.sh test' installs it from npm")
        if not self.page.evaluate("() => typeof window.axe === 'object'"):
            self.page.evaluate(AXE_JS.read_text(encoding="utf-8"))  # through DevTools: the page's CSP still holds
        result = self.page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:5]}"
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert not bad, f"axe on {name}:\n" + "\n".join(bad)

    def assert_clean(self) -> None:
        """Nothing went to the browser console as an error: no CSP violation, no script error."""
        assert not self.errors, "\n".join(self.errors)
