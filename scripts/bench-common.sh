# Sourced by the bench-*.sh scripts after env.sh, from the repository root: the llamagate
# binary (built unless LLAMAGATE_BIN names one built before, e.g. the one scripts/test.sh
# built), llama.cpp's own llama-server (scripts/build-llama-server.sh), the threads every
# server gets (the physical cores unless THREADS), ROUNDS (3), helpers for the ports, and
# the TPOT of a bench run.
BIN="${LLAMAGATE_BIN:-$CARGO_TARGET_DIR/debug/llamagate}"
[[ -n "${LLAMAGATE_BIN:-}" ]] || cargo build --bin llamagate
LLAMA_SERVER="$(scripts/build-llama-server.sh)"
THREADS="${THREADS:-$(grep -E '^core id' /proc/cpuinfo | sort -u | wc -l)}"
[[ "$THREADS" -ge 1 ]] || THREADS=$(nproc)
ROUNDS="${ROUNDS:-3}"

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The TPOT p50 in ms (one decimal) of the first scenario of the `llamagate bench` run whose
# output directory is $1.
tpot_p50() {
    python3 -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["scenarios"][0]["tpot_ms"]["p50"])' "$1/results.json"
}

# Waits (up to 60 s) until the server on port $1 answers /health.
wait_health() {
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0
        sleep 0.2
    done
    echo "no answer on port $1" >&2
    return 1
}
