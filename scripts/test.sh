#!/usr/bin/env bash
# Runs every check and test. Does all set-up on a fresh machine: installs the test
# dependencies (scripts/setup.sh), fetches the test model, builds llama.cpp's llama-server
# (an upstream in the pool tests), builds, then runs formatting
# and lint checks, the Rust test suite (unit tests; end-to-end tests with the real model,
# a real Prometheus), the chat page in headless Chromium, the official OpenAI and
# Anthropic Python SDKs and schemathesis against the live OpenAPI document; and the
# `vulkan` build of llama.cpp's engine on Mesa's software Vulkan driver (lavapipe).
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
trap 'rm -f "$LOG" "$LOG.sdk" "$LOG.browser" "$LOG.vulkan"' EXIT
echo "== cargo test"
# Two test threads on these cores often run two llama.cpp generations at once, in two
# processes. libgomp (llama.cpp's OpenMP) spins up to 300 000 times at each of a forward
# pass's barriers when its process holds no more threads than cores, so each process
# spins while the other's threads wait for a core: the Q4_1 took 210-290 ms per token
# beside another generation instead of 10 alone. The spin count libgomp itself uses in a
# crowded process (1000) keeps 10 ms alone and gives 31 ms side by side (docs/BENCHMARKS.md,
# "Two processes on the same cores"). Every server the tests start inherits it.
export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-1000}"
cargo test --no-fail-fast -- --test-threads="${LLAMAGATE_TEST_THREADS:-2}" 2>&1 | tee "$LOG"
cargo_passed=$(grep -Eo '[0-9]+ passed' "$LOG" | awk '{s+=$1} END {print s+0}')

echo "== the vulkan build on Mesa's lavapipe (llama.cpp's Vulkan backend; ~10 min the first time)"
# The `vulkan` build lands where the default binary does: it is copied aside, the default
# one put back for the tests below, and the e2e group `vulkan::` runs the copy, one test at
# a time (lavapipe runs on these same cores). The default run above skipped that group.
VULKAN_SDK="$(scripts/vulkan-sdk.sh)" cargo build --features vulkan --bin llamagate
LLAMAGATE_VULKAN_BIN="$CARGO_TARGET_DIR/llamagate-vulkan"
cp "$CARGO_TARGET_DIR/debug/llamagate" "$LLAMAGATE_VULKAN_BIN"
cargo build --bin llamagate
LLAMAGATE_VULKAN_BIN="$LLAMAGATE_VULKAN_BIN" cargo test --test e2e vulkan:: -- \
    --test-threads=1 2>&1 | tee "$LOG.vulkan"
if grep -q "skipped: LLAMAGATE_VULKAN_BIN" "$LOG.vulkan"; then
    echo "the vulkan tests did not run" >&2
    exit 1
fi
vulkan_passed=$(grep -Eo '[0-9]+ passed' "$LOG.vulkan" | awk '{s+=$1} END {print s+0}')

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
echo "tests: $((cargo_passed + vulkan_passed + sdk_passed + browser_passed + 2)) passed, 0 failed"
