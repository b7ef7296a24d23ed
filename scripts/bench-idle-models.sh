#!/usr/bin/env bash
# What an idle model costs the one decoding: docs/BENCHMARKS.md's "Several models in one
# process". One llamagate holds SmolLM2 F16 and F32 (made by `llamagate quantize` from the
# Q4_1), llama.cpp engine, THREADS threads each, one slot each; `llamagate bench` (one
# request at a time, REQUESTS requests of 128 greedy tokens) runs on F16, then F32, then
# F16 and F32 again: TPOT p50 of each, so the second and later runs show what the other,
# now idle, model costs. BINS names the binaries to compare (default: this tree's), each
# run in turn on the same files; results go to $OUT (bench-results/idle-models). Nothing
# else should run meanwhile.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/fetch-models.sh >/dev/null
source scripts/bench-common.sh
SRC="$LLAMAGATE_ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
REQUESTS="${REQUESTS:-3}"
read -r -a BINARIES <<<"${BINS:-$BIN}"
OUT="${OUT:-bench-results}/idle-models"
mkdir -p "$OUT/models"
for t in f16 f32; do
    [[ -f "$OUT/models/smollm2-$t.gguf" ]] || "$BIN" quantize "$SRC" "$OUT/models/smollm2-$t.gguf" --type "$t" >/dev/null
done
printf '| binary | F16 first | F32 | F16 again | F32 again |\n|---|---:|---:|---:|---:|\n' >"$OUT/table.md"
for bin in "${BINARIES[@]}"; do
    PORT="$(free_port)"
    {
        printf '[server]\nbind = "127.0.0.1:%s"\n' "$PORT"
        for t in f16 f32; do
            printf '[[models]]\nname = "%s"\nsource = "%s"\nengine = "llama.cpp"\n' "$t" "$OUT/models/smollm2-$t.gguf"
            printf 'threads = %s\ncontext_length = 2048\nmax_concurrent = 1\n' "$THREADS"
        done
    } >"$OUT/llamagate.toml"
    "$bin" serve --config "$OUT/llamagate.toml" >"$OUT/llamagate.log" 2>&1 &
    pid=$!
    wait_health "$PORT"
    row="| \`$bin\` |"
    for name in f16 f32 f16 f32; do
        "$BIN" bench --requests "$REQUESTS" --concurrency 1 --prompt-words 0 --max-tokens 128 \
            --url "http://127.0.0.1:$PORT/v1" --model "$name" --out "$OUT/run" >/dev/null
        tpot="$(tpot_p50 "$OUT/run")"
        row="$row $tpot |"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo "$row" >>"$OUT/table.md"
done
echo "TPOT p50 in ms, $THREADS threads, $REQUESTS requests of 128 tokens each"
cat "$OUT/table.md"
