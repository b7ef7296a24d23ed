#!/usr/bin/env bash
# llamagate's llama.cpp engine against llama.cpp's own llama-server, the numbers of
# docs/BENCHMARKS.md's "Against llama-server" section: the test model's Q4_1 file, the
# same threads, streamed chat through `llamagate bench` (OpenAI wire format, temperature
# 0, 128 tokens), fresh short prompts, fresh ~512-word prompts and one repeated prompt
# (prefix-cache hits), at concurrency 1 and 4, ROUNDS interleaved rounds (medians).
# Then a per-token breakdown at concurrency 1: llamagate's worker logs each forward pass
# (its trace hook: the forward pass, then sampling, detokenizing, stop matching and
# sending), llama-server its own per-token eval time; what the client sees per token
# beyond that is the server's HTTP, SSE and channel cost. BATCH_TOKENS sets llamagate's
# `batch_tokens` (default 512; llama-server's --batch-size is 2048). Results go to $OUT
# (bench-results/llama-server). Nothing else should run meanwhile.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/fetch-models.sh >/dev/null
source scripts/bench-common.sh
MODEL="$LLAMAGATE_ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
REQUESTS="${REQUESTS:-8}"
OUT="${OUT:-bench-results}/llama-server"
mkdir -p "$OUT"

PORT="$(free_port)"
cat >"$OUT/llamagate.toml" <<EOF
[server]
bind = "127.0.0.1:$PORT"
[[models]]
name = "smollm2"
source = "$MODEL"
engine = "llama.cpp"
threads = $THREADS
context_length = 2048
max_concurrent = 4
${BATCH_TOKENS:+batch_tokens = $BATCH_TOKENS}
EOF
LLAMAGATE_LOG="info,llamagate::engine::llama_cpp::worker=trace" \
    "$BIN" serve --config "$OUT/llamagate.toml" >"$OUT/llamagate.log" 2>&1 &
PIDS=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
wait_health "$PORT"
PEER="$(free_port)"
# 4 slots of 2048 tokens (llama-server divides -c among its slots); prompt caching is on
# by default.
"$LLAMA_SERVER" -m "$MODEL" --host 127.0.0.1 --port "$PEER" -t "$THREADS" -tb "$THREADS" \
    -np 4 -c 8192 >"$OUT/llama-server.log" 2>&1 &
PIDS+=($!)
wait_health "$PEER"

bench() { # name, url, extra args...
    local name=$1 url=$2
    shift 2
    "$BIN" bench --requests "$REQUESTS" --concurrency 1,4 --max-tokens 128 --url "$url" \
        --out "$OUT/$name" "$@" >/dev/null
}
for round in $(seq 1 "$ROUNDS"); do
    for server in llamagate llama-server; do
        echo "== round $round/$ROUNDS: $server"
        # llamagate also lists the files of its models folder: name the one measured.
        if [[ $server == llamagate ]]; then
            url="http://127.0.0.1:$PORT/v1" model=(--model smollm2)
        else
            url="http://127.0.0.1:$PEER/v1" model=()
        fi
        bench "$server-fresh-$round" "$url" "${model[@]}" --prompt-words 0,512
        bench "$server-repeated-$round" "$url" "${model[@]}" --prompt-words 0 --repeat-prompt
    done
done

echo "== per-token breakdown (concurrency 1, fresh short prompts)"
from_ours=$(wc -l <"$OUT/llamagate.log")
"$BIN" bench --requests "$REQUESTS" --concurrency 1 --prompt-words 0 --max-tokens 128 \
    --url "http://127.0.0.1:$PORT/v1" --model smollm2 --out "$OUT/llamagate-profile" >/dev/null
tail -n +"$((from_ours + 1))" "$OUT/llamagate.log" >"$OUT/llamagate-profile.log"
from_peer=$(wc -l <"$OUT/llama-server.log")
"$BIN" bench --requests "$REQUESTS" --concurrency 1 --prompt-words 0 --max-tokens 128 \
    --url "http://127.0.0.1:$PEER/v1" --out "$OUT/llama-server-profile" >/dev/null
tail -n +"$((from_peer + 1))" "$OUT/llama-server.log" >"$OUT/llama-server-profile.log"

python3 - "$OUT" "$ROUNDS" "$THREADS" <<'PY' | tee "$OUT/table.md"
import json, re, statistics, sys
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def scenarios(name):
    return [json.load(open(f"{out}/{name}-{r}/results.json")) for r in range(1, rounds + 1)]
def median_of(name, words, conc):
    found = [s for run in scenarios(name) for s in run["scenarios"]
             if s["prompt_words"] == words and s["concurrency"] == conc]
    decode = statistics.median(1000 / s["tpot_ms"]["p50"] for s in found)
    ttft = statistics.median(s["ttft_ms"]["p50"] for s in found)
    tokens = statistics.median(s["output_tokens_per_s"] for s in found)
    return decode, ttft, tokens, found[0]["prompt_tokens"]
machine = scenarios("llamagate-fresh")[0]["machine"]
print(f"{machine['cpu']}, {threads} threads, SmolLM2-135M-Instruct Q4_1, 128 greedy tokens, "
      f"medians of {rounds} interleaved rounds\n")
print("| prompt | conc | llamagate decode tok/s (per stream) | llama-server | ratio | llamagate TTFT p50 ms | llama-server | TTFT ratio (lower is better) | llamagate aggregate tok/s | llama-server |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, kind, words in (("fresh short", "fresh", 0), ("fresh ~512 words", "fresh", 512),
                           ("repeated (cached)", "repeated", 0)):
    for conc in (1, 4):
        a = median_of(f"llamagate-{kind}", words, conc)
        b = median_of(f"llama-server-{kind}", words, conc)
        print(f"| {label} ({a[3]:.0f} tokens) | {conc} | {a[0]:.1f} | {b[0]:.1f} | {a[0] / b[0]:.2f}x | "
              f"{a[1]:.1f} | {b[1]:.1f} | {a[1] / b[1]:.2f}x | {a[2]:.1f} | {b[2]:.1f} |")

# Per-token breakdown.
steps = []
for line in open(f"{out}/llamagate-profile.log"):
    m = re.search(r"decode_us=(\d+) sample_us=(\d+) batch_tokens=(\d+)", line)
    if m and m.group(3) == "1":
        steps.append((int(m.group(1)), int(m.group(2))))
evals = [float(m.group(1)) for line in open(f"{out}/llama-server-profile.log")
         for m in [re.search(r"eval time =.*\(\s*([0-9.]+) ms per token", line)]
         if m and "prompt eval" not in line]
ours = json.load(open(f"{out}/llamagate-profile/results.json"))["scenarios"][0]
peer = json.load(open(f"{out}/llama-server-profile/results.json"))["scenarios"][0]
fwd = statistics.median(d for d, _ in steps) / 1000
samp = statistics.median(s for _, s in steps) / 1000
print(f"\nPer token at concurrency 1 (fresh short prompts, {len(steps)} decode steps logged):\n")
print("| | llamagate | llama-server |")
print("|---|---:|---:|")
peer_eval = statistics.median(evals) if evals else float("nan")
print(f"| forward pass (llama.cpp decode), median ms | {fwd:.2f} | – |")
print(f"| sampling, detokenizing, stop matching, sending, median ms | {samp:.3f} | – |")
print(f"| inside the engine per token (llama-server: its eval time per token), ms | {fwd + samp:.2f} | {peer_eval:.2f} |")
print(f"| what the client sees (TPOT p50), ms | {ours['tpot_ms']['p50']:.2f} | {peer['tpot_ms']['p50']:.2f} |")
print(f"| HTTP, SSE, channels, client parsing (the difference), ms | {ours['tpot_ms']['p50'] - fwd - samp:.2f} | {peer['tpot_ms']['p50'] - peer_eval:.2f} |")
PY
