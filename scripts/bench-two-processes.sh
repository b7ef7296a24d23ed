#!/usr/bin/env bash
# Two llama.cpp generations in two processes on the same cores: docs/BENCHMARKS.md's "Two
# processes on the same cores". Two llamagate servers, each with the Q4_1 (or the GGUF
# MODEL_FILE names; llama.cpp engine, THREADS threads); `llamagate bench` (one request at
# a time, REQUESTS requests of 64 greedy tokens) on the first alone, then on both at once:
# TPOT p50 of each. Each MODE is an OpenMP setting both servers get: `default` (none),
# `passive` (OMP_WAIT_POLICY=passive), `spinN` (GOMP_SPINCOUNT=N) or `threads1`
# (threads = 1).
# Results go to $OUT (bench-results/two-processes). Nothing else should run meanwhile.
#   scripts/bench-two-processes.sh default spin1000 passive threads1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/fetch-models.sh >/dev/null
source scripts/bench-common.sh
SRC="${MODEL_FILE:-$LLAMAGATE_ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
REQUESTS="${REQUESTS:-3}"
OUT="${OUT:-bench-results}/two-processes"
mkdir -p "$OUT"
[[ $# -gt 0 ]] || set -- default spin1000 passive threads1

bench() {
    "$BIN" bench --requests "$REQUESTS" --concurrency 1 --prompt-words 0 --max-tokens 64 \
        --url "http://127.0.0.1:$1/v1" --model m --out "$OUT/run-$1" >>"$OUT/bench.log" 2>&1
}

printf '| OpenMP setting | alone | side by side (first) | side by side (second) |\n|---|---:|---:|---:|\n' >"$OUT/table.md"
for mode in "$@"; do
    envs=()
    threads="$THREADS"
    case "$mode" in
        default) ;;
        passive) envs+=(OMP_WAIT_POLICY=passive) ;;
        spin*) envs+=(GOMP_SPINCOUNT="${mode#spin}") ;;
        threads1) threads=1 ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    ports=() pids=()
    for i in 1 2; do
        port="$(free_port)"
        printf '[server]\nbind = "127.0.0.1:%s"\n[[models]]\nname = "m"\nsource = "%s"\nengine = "llama.cpp"\nthreads = %s\npinned = true\n' \
            "$port" "$SRC" "$threads" >"$OUT/llamagate-$i.toml"
        env "${envs[@]}" "$BIN" serve --config "$OUT/llamagate-$i.toml" >"$OUT/llamagate-$i.log" 2>&1 &
        pids+=($!) ports+=("$port")
    done
    for port in "${ports[@]}"; do wait_health "$port"; done
    bench "${ports[0]}" # warms the first; the second is loaded (pinned) and warms below
    bench "${ports[0]}"
    alone="$(tpot_p50 "$OUT/run-${ports[0]}")"
    bench "${ports[0]}" &
    first=$!
    bench "${ports[1]}"
    wait "$first"
    echo "| $mode | $alone | $(tpot_p50 "$OUT/run-${ports[0]}") | $(tpot_p50 "$OUT/run-${ports[1]}") |" >>"$OUT/table.md"
    kill "${pids[@]}"
    wait "${pids[@]}" 2>/dev/null || true
done
echo "TPOT p50 in ms, $THREADS threads, $REQUESTS requests of 64 tokens each"
cat "$OUT/table.md"
