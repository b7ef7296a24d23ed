#!/usr/bin/env bash
# Runs every check and test. Does all set-up on a fresh machine: installs the system
# packages the tests use (scripts/setup.sh), fetches the test model, builds, then runs
# formatting and lint checks and the whole test suite (unit tests, end-to-end tests
# against the real model, a real Prometheus).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"

started=$(date +%s)
echo "== system packages"
scripts/setup.sh

echo "== fetching the test model"
scripts/fetch-models.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "== cargo test"
cargo test --no-fail-fast -- --test-threads="${LLAMAGATE_TEST_THREADS:-2}"

echo "== all checks passed in $(( $(date +%s) - started )) s"
