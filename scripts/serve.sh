#!/usr/bin/env bash
# Serves the default models on 127.0.0.1:8080 (config/default.toml): the chat model and
# the embedding model. Does all set-up: fetches the models, builds llamagate, then runs
# `llamagate serve`. Extra arguments go to `llamagate serve`, e.g.
# `scripts/serve.sh --bind 0.0.0.0:8080`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/build-deps.sh
scripts/fetch-models.sh --all
# Built together with the tests: one feature set, so serving and testing share one build.
cargo build --tests --bin llamagate
exec "$CARGO_TARGET_DIR/debug/llamagate" serve --config config/default.toml "$@"
