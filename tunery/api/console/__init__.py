"""The console's static files: one page (``index.html``), its module (``app.js``), its style sheet and the
vendored chart library (uPlot, MIT, ``vendor/``). No build step: plain ES modules, shipped as package data
and served by ``tunery.api.routes.console``.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
