#!/usr/bin/env bash
# Serves the default model on 127.0.0.1:8080 (config/default.toml). Does all set-up:
# fetches the model, builds llamagate, then runs `llamagate serve`. Extra arguments go to
# `llamagate serve`, e.g. `scripts/serve.sh --bind 0.0.0.0:8080`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/fetch-models.sh
cargo build --bin llamagate
exec "$CARGO_TARGET_DIR/debug/llamagate" serve --config config/default.toml "$@"
