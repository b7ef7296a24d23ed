#!/usr/bin/env bash
# Installs, once, what the test suite needs beside Rust and Python: Debian packages
# (Prometheus and promtool for the metrics tests, Chromium for the chat-page test), the
# browser driver from npm (playwright-core, driving Debian's Chromium), and schemathesis
# and the official openai and anthropic SDKs from PyPI in a virtual environment. Skips what is there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"

scripts/build-deps.sh

packages=()
command -v prometheus >/dev/null 2>&1 || packages+=(prometheus)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v node >/dev/null 2>&1 || packages+=(nodejs npm)
scripts/apt-install.sh ${packages[@]+"${packages[@]}"}

if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
    echo "installing playwright-core (npm)"
    (cd tests/browser && npm install --no-audit --no-fund --silent)
fi

if [[ ! -x "$LLAMAGATE_VENV/bin/schemathesis" ]] \
    || ! "$LLAMAGATE_VENV/bin/python" -c "import openai, anthropic" 2>/dev/null; then
    echo "installing schemathesis and the openai and anthropic SDKs (PyPI) into $LLAMAGATE_VENV"
    python3 -m venv "$LLAMAGATE_VENV"
    "$LLAMAGATE_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==4.32.5" "openai>=1.100,<3" "anthropic>=2,<3" "pydantic>=2"
fi
echo "test dependencies ready"
