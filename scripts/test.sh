#!/usr/bin/env bash
# Runs every check and test. Does all set-up on a fresh machine: installs the test
# dependencies (scripts/setup.sh), fetches the test model, builds llama.cpp's llama-server
# (an upstream in the pool tests), builds, then runs formatting
# and lint checks, the Rust test suite (unit tests; end-to-end tests with the real model,
# a real Prometheus), the chat page in headless Chromium, the official OpenAI and
# Anthropic Python SDKs and schemathesis against the live OpenAPI document.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"

started=$(date +%s)
echo "== test dependencies"
scripts/setup.sh

echo "== fetching the test model"
scripts/fetch-models.sh --all

echo "== llama.cpp's own llama-server (an upstream in the pool tests; ~10 min the first time)"
LLAMA_SERVER="$(scripts/build-llama-server.sh)"
export LLAMA_SERVER

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

LOG="$(mktemp)"
trap 'rm -f "$LOG" "$LOG.sdk" "$LOG.browser"' EXIT
echo "== cargo test"
cargo test --no-fail-fast -- --test-threads="${LLAMAGATE_TEST_THREADS:-2}" 2>&1 | tee "$LOG"
cargo_passed=$(grep -Eo '[0-9]+ passed' "$LOG" | awk '{s+=$1} END {print s+0}')

echo "== chat page in headless Chromium"
node tests/browser/chat.mjs | tee "$LOG.browser"
browser_passed=$(grep -Eo '^[0-9]+ passed' "$LOG.browser" | awk '{s+=$1} END {print s+0}')

echo "== the official OpenAI Python SDK"
"$LLAMAGATE_VENV/bin/python" tests/sdk/openai_sdk.py | tee "$LOG.sdk"
echo "== the official Anthropic Python SDK"
"$LLAMAGATE_VENV/bin/python" tests/sdk/anthropic_sdk.py | tee -a "$LOG.sdk"
sdk_passed=$(grep -Eo '^[0-9]+ passed' "$LOG.sdk" | awk '{s+=$1} END {print s+0}')

echo "== schemathesis against /openapi.json"
scripts/schemathesis.sh

echo "== all checks passed in $(( $(date +%s) - started )) s"
# schemathesis: two runs (the key routes last), each counted as one.
echo "tests: $((cargo_passed + sdk_passed + browser_passed + 2)) passed, 0 failed"
