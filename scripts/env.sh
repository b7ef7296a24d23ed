# Sourced by the other scripts: common environment.
# Builds go outside the clone so CI and later checkouts reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/llamagate/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export LLAMAGATE_VENV="${LLAMAGATE_VENV:-$HOME/.cache/llamagate/venv}"
LLAMAGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LLAMAGATE_ROOT
