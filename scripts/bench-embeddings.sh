#!/usr/bin/env bash
# Embeddings side by side, the numbers of docs/BENCHMARKS.md's embeddings section:
# llamagate (llama.cpp engine) and llama.cpp's own `llama-server --embedding`
# (scripts/build-llama-server.sh), same F16 GGUF (all-MiniLM-L6-v2), same threads, in
# ROUNDS interleaved rounds of `llamagate bench --embeddings` (batch 1/8/32, 12- and
# 120-word inputs); the table shows each scenario's median inputs/s and the ratio.
# llama-server runs with 16 slots and an 8192-token context (its defaults, 4 slots, were
# no faster). Results go to $OUT (bench-results/embeddings). Nothing else should run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/fetch-models.sh --embeddings >/dev/null
source scripts/bench-common.sh
MODEL="$LLAMAGATE_ROOT/models/all-MiniLM-L6-v2.F16.gguf"
REQUESTS="${REQUESTS:-8}"
OUT="${OUT:-bench-results}/embeddings"
mkdir -p "$OUT"

cat >"$OUT/llamagate.toml" <<TOML
[server]
bind = "127.0.0.1:0"
[[models]]
name = "minilm"
source = "$MODEL"
engine = "llama.cpp"
threads = $THREADS
TOML

PORT="$(free_port)"
"$LLAMA_SERVER" -m "$MODEL" --embedding --host 127.0.0.1 --port "$PORT" \
    -t "$THREADS" -tb "$THREADS" -np 16 -c 8192 >"$OUT/llama-server.log" 2>&1 &
PEER=$!
trap 'kill $PEER 2>/dev/null || true' EXIT
wait_health "$PORT"

args=(--embeddings --requests "$REQUESTS" --concurrency 1 --batch 1,8,32 --input-words 12,120)
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round/$ROUNDS: llamagate"
    "$BIN" bench "${args[@]}" --spawn "$OUT/llamagate.toml" --out "$OUT/llamagate-$round" >/dev/null
    echo "== round $round/$ROUNDS: llama-server"
    "$BIN" bench "${args[@]}" --url "http://127.0.0.1:$PORT/v1" --out "$OUT/llama-server-$round" >/dev/null
done

python3 - "$OUT" "$ROUNDS" "$THREADS" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(name):
    runs = [json.load(open(f"{out}/{name}-{r}/embeddings.json")) for r in range(1, rounds + 1)]
    table = {}
    for run in runs:
        for s in run["scenarios"]:
            table.setdefault((s["input_words"], s["batch"]), []).append(s)
    return runs[0]["machine"], table
machine, ours = load("llamagate")
_, peer = load("llama-server")
print(f"{machine['cpu']}, {threads} threads, median of {rounds} interleaved rounds\n")
print("| words/input | tokens/input | batch | llamagate inputs/s | llama-server inputs/s | ratio | llamagate tokens/s | llama-server tokens/s |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for key in sorted(ours):
    a, b = ours[key], peer[key]
    ia = statistics.median(s["inputs_per_s"] for s in a)
    ib = statistics.median(s["inputs_per_s"] for s in b)
    ta = statistics.median(s["tokens_per_s"] for s in a)
    tb = statistics.median(s["tokens_per_s"] for s in b)
    print(f"| {key[0]} | {a[0]['tokens_per_input']:.1f} | {key[1]} | {ia:.1f} | {ib:.1f} | {ia / ib:.2f}x | {ta:.0f} | {tb:.0f} |")
PY
