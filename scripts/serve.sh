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
# Only what serving needs, so the first answer on a fresh machine comes sooner: not the
# tests (scripts/test.sh builds those) and, unless LLAMAGATE_ENGINES=all, not the
# mistral.rs engine (about half a cold build), since `engine = "auto"` serves every model
# with llama.cpp on the CPU. A model configured with engine = "mistralrs" is then refused
# at start-up with the way to build it.
if [[ "${LLAMAGATE_ENGINES:-llama.cpp}" == all ]]; then
    cargo build --bin llamagate
else
    cargo build --bin llamagate --no-default-features
fi
exec "$CARGO_TARGET_DIR/debug/llamagate" serve --config config/default.toml "$@"
