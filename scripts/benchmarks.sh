#!/usr/bin/env bash
# Reproduces docs/BENCHMARKS.md's llamagate measurements: quantizes the test model to
# every type `llamagate quantize` makes, then benchmarks all of them with
# `llamagate bench --spawn` (one model loaded at a time). Results in bench-results/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/fetch-models.sh
cargo build --tests --bin llamagate
BIN="$CARGO_TARGET_DIR/debug/llamagate"
SRC=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT="${OUT:-bench-results}"
mkdir -p "$OUT/models"
CONFIG="$OUT/bench.toml"
printf '[server]\nbind = "127.0.0.1:0"\n[scheduler]\nmax_loaded_models = 1\n' > "$CONFIG"
for t in f16 q8_0 q6_k q5_k q5_0 q4_k q4_0; do
    "$BIN" quantize "$SRC" "$OUT/models/smollm2-$t.gguf" --type "$t"
    printf '[[models]]\nname = "smollm2-%s"\nsource = "%s"\ndevice = "cpu"\ncontext_length = 2048\nmax_concurrent = 8\n' \
        "$t" "$OUT/models/smollm2-$t.gguf" >> "$CONFIG"
done
printf '[[models]]\nname = "smollm2-q4_1"\nsource = "%s"\ndevice = "cpu"\ncontext_length = 2048\nmax_concurrent = 8\n' "$SRC" >> "$CONFIG"
"$BIN" bench --spawn "$CONFIG" --prompt-words "${PROMPT_WORDS:-0}" --concurrency 1,2,4,8 \
    --max-tokens "${MAX_TOKENS:-64}" --requests 8 --out "$OUT" | tee "$OUT/table.md"
