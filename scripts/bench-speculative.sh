#!/usr/bin/env bash
# Speculative decoding side by side, the numbers of docs/BENCHMARKS.md's speculative
# section: the test model as target in TARGETS (default F32 and F16, made by `llamagate
# quantize` from the Q4_1), drafted by DRAFT (default q4_1: the Q4_1 file itself, whose
# weights the F32 holds exactly; q4_0 etc. are made by `llamagate quantize`), on
# llamagate's llama.cpp engine (`draft = ...`) and on llama.cpp's
# own llama-server (`-md`, scripts/build-llama-server.sh), each also without the draft;
# same files, same threads, one request at a time, greedy (`llamagate bench`: temperature
# 0, 128 tokens), ROUNDS interleaved rounds. The table shows each one's median decode
# tokens/s (1000 / TPOT p50) and TTFT, and the ratios. llamagate drafts up to DRAFT_MAX
# (16) tokens, choosing how many as it goes unless ADAPTIVE=false; llama-server drafts
# PEER_DRAFT_MAX (6, its fastest on this pair, docs/BENCHMARKS.md); both stop when the
# draft's best guess is below P_MIN (0). llama-server needs
# `--spec-type draft-simple` to use its draft at all. Results
# go to $OUT (bench-results/speculative). Nothing else should run meanwhile.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/fetch-models.sh >/dev/null
source scripts/bench-common.sh
SRC="$LLAMAGATE_ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
REQUESTS="${REQUESTS:-4}"
TARGETS=(${TARGETS:-f32 f16})
DRAFT="${DRAFT:-q4_1}"
DRAFT_MAX="${DRAFT_MAX:-16}"
ADAPTIVE="${ADAPTIVE:-true}"
PEER_DRAFT_MAX="${PEER_DRAFT_MAX:-6}"
P_MIN="${P_MIN:-0}"
OUT="${OUT:-bench-results}/speculative"
mkdir -p "$OUT/models"
for t in "${TARGETS[@]}" "$DRAFT"; do
    if [[ $t == q4_1 ]]; then
        ln -sf "$SRC" "$OUT/models/smollm2-q4_1.gguf"
    elif [[ ! -f "$OUT/models/smollm2-$t.gguf" ]]; then
        "$BIN" quantize "$SRC" "$OUT/models/smollm2-$t.gguf" --type "$t" >/dev/null
    fi
done

PORT="$(free_port)"
{
    printf '[server]\nbind = "127.0.0.1:%s"\n' "$PORT"
    printf '[[models]]\nname = "draft"\nsource = "%s"\nengine = "llama.cpp"\n' "$OUT/models/smollm2-$DRAFT.gguf"
    for t in "${TARGETS[@]}"; do
        for drafted in 0 1; do
            printf '[[models]]\nname = "%s"\nsource = "%s"\nengine = "llama.cpp"\n' \
                "$t$([[ $drafted == 1 ]] && echo -draft || true)" "$OUT/models/smollm2-$t.gguf"
            printf 'threads = %s\ncontext_length = 2048\nmax_concurrent = 1\n' "$THREADS"
            [[ $drafted == 0 ]] || printf 'draft = "draft"\ndraft_max = %s\ndraft_adaptive = %s\ndraft_p_min = %s\n' \
                "$DRAFT_MAX" "$ADAPTIVE" "$P_MIN"
        done
    done
} >"$OUT/llamagate.toml"
"$BIN" serve --config "$OUT/llamagate.toml" >"$OUT/llamagate.log" 2>&1 &
PIDS=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
wait_health "$PORT"

declare -A PEER
peer() { # target, with draft (0/1): starts it, its port in PEER[target-draft]
    local port
    port="$(free_port)"
    local extra=()
    [[ $2 == 0 ]] || extra=(-md "$OUT/models/smollm2-$DRAFT.gguf" --spec-type draft-simple --spec-draft-n-max "$PEER_DRAFT_MAX"
        --spec-draft-n-min 0 --spec-draft-p-min "$P_MIN" -td "$THREADS" -tbd "$THREADS")
    "$LLAMA_SERVER" -m "$OUT/models/smollm2-$1.gguf" "${extra[@]}" --host 127.0.0.1 --port "$port" \
        -t "$THREADS" -tb "$THREADS" -np 1 -c 2048 >"$OUT/llama-server-$1-$2.log" 2>&1 &
    PIDS+=($!)
    wait_health "$port"
    PEER[$1-$2]="$port"
}
for t in "${TARGETS[@]}"; do
    peer "$t" 0
    peer "$t" 1
done

args=(--requests "$REQUESTS" --concurrency 1 --prompt-words 0 --max-tokens 128)
for round in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        for d in 0 1; do
            name="$t"
            [[ $d == 0 ]] || name="$t-draft"
            echo "== round $round/$ROUNDS: $name on llamagate, then on llama-server"
            "$BIN" bench "${args[@]}" --url "http://127.0.0.1:$PORT/v1" --model "$name" \
                --out "$OUT/llamagate-$name-$round" >/dev/null
            "$BIN" bench "${args[@]}" --url "http://127.0.0.1:${PEER[$t-$d]}/v1" \
                --out "$OUT/llama-server-$name-$round" >/dev/null
        done
    done
done
curl -s "http://127.0.0.1:$PORT/metrics" | grep '^llamagate_draft' >"$OUT/draft-metrics.txt"
for t in "${TARGETS[@]}"; do
    grep -o 'draft acceptance = [0-9.]*' "$OUT/llama-server-$t-1.log" |
        awk -v t="$t" '{s += $4; n++} END {if (n) printf "%s %.3f\n", t, s / n}'
done >"$OUT/llama-server-acceptance.txt"

python3 - "$OUT" "$ROUNDS" "$THREADS" "$DRAFT" "${TARGETS[@]}" <<'PY' | tee "$OUT/table.md"
import json, re, statistics, sys
out, rounds, threads, draft, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].upper(), sys.argv[5:]
def runs(name):
    return [json.load(open(f"{out}/{name}-{r}/results.json")) for r in range(1, rounds + 1)]
def measure(name):
    scen = [run["scenarios"][0] for run in runs(name)]
    decode = statistics.median(1000 / s["tpot_ms"]["p50"] for s in scen)
    ttft = statistics.median(s["ttft_ms"]["p50"] for s in scen)
    return decode, ttft
machine = runs(f"llamagate-{targets[0]}")[0]["machine"]
accepted = {}
for line in open(f"{out}/draft-metrics.txt"):
    m = re.match(r'llamagate_draft_(accepted_)?tokens_total\{model="([^"]+)"\} (\S+)', line)
    if m:
        accepted.setdefault(m.group(2), {})["kept" if m.group(1) else "guessed"] = float(m.group(3))
print(f"{machine['cpu']}, {threads} threads, one request at a time, 128 greedy tokens, "
      f"median of {rounds} interleaved rounds\n")
peer_rate = dict(l.split() for l in open(f"{out}/llama-server-acceptance.txt"))
print("| target | draft | llamagate decode tok/s | llama-server decode tok/s | ratio | llamagate TTFT ms | llama-server TTFT ms | draft speed-up, llamagate / llama-server | acceptance, llamagate / llama-server |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for t in targets:
    base, peer_base = measure(f"llamagate-{t}")[0], measure(f"llama-server-{t}")[0]
    for d in ("", "-draft"):
        (a, ta), (b, tb) = measure(f"llamagate-{t}{d}"), measure(f"llama-server-{t}{d}")
        acc = accepted.get(f"{t}{d}", {})
        rate = (f"{acc['kept'] / acc['guessed']:.0%} / {float(peer_rate.get(t, 0)):.0%}"
                if acc.get("guessed") else "–")
        speedup = f"{a / base:.2f}x / {b / peer_base:.2f}x" if d else "–"
        print(f"| {t.upper()} | {draft if d else 'none'} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {ta:.0f} | {tb:.0f} | {speedup} | {rate} |")
PY
