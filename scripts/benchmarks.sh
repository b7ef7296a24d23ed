#!/usr/bin/env bash
# Reproduces every number in docs/BENCHMARKS.md, in one run on this machine:
#   1. quantizes the test model to every type `llamagate quantize` makes;
#   2. `llamagate bench --spawn` on the llama.cpp engine (all quantizations, short and
#      ~512-word prompts, concurrency 1/2/4/8, 128 tokens);
#   3. the same on the mistral.rs engine (short prompts at every quantization; long
#      prompts for Q4_1 and Q4_0: its CPU prefill is slow);
#   4. `llamagate bench --url` against llama.cpp's Python OpenAI server
#      (llama-cpp-python, installed into its own venv) on the same files and threads;
#   5. `llamagate bench --overhead` (in-process vs HTTP) for both engines;
#   6. scripts/bench_tables.py: the side-by-side tables of the document;
#   7. scripts/bench-embeddings.sh: /v1/embeddings against llama.cpp's llama-server.
# Results go to bench-results/ (OUT=...). Nothing else should run meanwhile.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LLAMAGATE_ROOT"
scripts/build-deps.sh
scripts/fetch-models.sh
cargo build --tests --bin llamagate
BIN="$CARGO_TARGET_DIR/debug/llamagate"
SRC=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT="${OUT:-bench-results}"
THREADS="${THREADS:-$(grep -E '^core id' /proc/cpuinfo | sort -u | wc -l)}"
[[ "$THREADS" -ge 1 ]] || THREADS=$(nproc)
QUANTS=(f16 q8_0 q6_k q5_k q5_0 q4_k q4_0 q4_1)
mkdir -p "$OUT/models"

echo "== quantizing"
for t in "${QUANTS[@]}"; do
    if [[ $t == q4_1 ]]; then
        cp -f "$SRC" "$OUT/models/smollm2-q4_1.gguf"
    else
        "$BIN" quantize "$SRC" "$OUT/models/smollm2-$t.gguf" --type "$t"
    fi
done

VENV="$HOME/.cache/llamagate/bench-venv"
if ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "== installing llama-cpp-python[server] (builds llama.cpp; several minutes)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
fi

config() { # engine
    printf '[server]\nbind = "127.0.0.1:0"\n[scheduler]\nmax_loaded_models = 1\n'
    for t in "${QUANTS[@]}"; do
        printf '[[models]]\nname = "smollm2-%s"\nsource = "%s"\nengine = "%s"\ndevice = "cpu"\n' \
            "$t" "$OUT/models/smollm2-$t.gguf" "$1"
        printf 'context_length = 2048\nmax_concurrent = 8\nthreads = %s\n' "$THREADS"
    done
}
config llama.cpp > "$OUT/llama.cpp.toml"
config mistralrs | grep -v '^threads' > "$OUT/mistralrs.toml"

echo "== llamagate, llama.cpp engine"
"$BIN" bench --spawn "$OUT/llama.cpp.toml" --prompt-words 0,512 --concurrency 1,2,4,8 \
    --max-tokens 128 --requests 8 --out "$OUT/llamagate-llama.cpp" | tee "$OUT/llamagate-llama.cpp.md"

echo "== llamagate, mistral.rs engine"
"$BIN" bench --spawn "$OUT/mistralrs.toml" --prompt-words 0 --concurrency 1,2,4,8 \
    --max-tokens 128 --requests 4 --out "$OUT/llamagate-mistralrs" | tee "$OUT/llamagate-mistralrs.md"
"$BIN" bench --spawn "$OUT/mistralrs.toml" --model smollm2-q4_1 --model smollm2-q4_0 \
    --prompt-words 512 --concurrency 1,4 --max-tokens 128 --requests 4 \
    --out "$OUT/llamagate-mistralrs-long" | tee "$OUT/llamagate-mistralrs-long.md"

echo "== llama-cpp-python server"
for t in "${QUANTS[@]}"; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$VENV/bin/python" -m llama_cpp.server --model "$OUT/models/smollm2-$t.gguf" \
        --n_threads "$THREADS" --n_ctx 2048 --port "$port" --interrupt_requests false \
        --model_alias "smollm2-$t" >"$OUT/llama-cpp-python-$t.log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do
        curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
        sleep 0.5
    done
    "$BIN" bench --url "http://127.0.0.1:$port/v1" --model "smollm2-$t" --prompt-words 0,512 \
        --concurrency 1,4 --max-tokens 128 --requests 4 --out "$OUT/llama-cpp-python/$t" \
        | tee "$OUT/llama-cpp-python-$t.md"
    kill "$pid"; wait "$pid" 2>/dev/null || true
done

echo "== gateway overhead"
for engine in llama.cpp mistralrs; do
    "$BIN" bench --overhead --spawn "$OUT/$engine.toml" --model smollm2-q4_1 --requests 10 \
        --max-tokens 128 --out "$OUT/overhead-$engine" | tee "$OUT/overhead-$engine.md"
done

python3 scripts/bench_tables.py "$OUT" | tee "$OUT/summary.md"
cp "$OUT/llamagate-llama.cpp/chart.svg" docs/benchmarks/chart-llama.cpp.svg
cp "$OUT/summary.md" docs/benchmarks/summary.md
cp "$OUT/llamagate-mistralrs/chart.svg" docs/benchmarks/chart-mistralrs.svg
echo "== embeddings"
OUT="$OUT" scripts/bench-embeddings.sh
cp "$OUT/embeddings/table.md" docs/benchmarks/embeddings.md
cp "$OUT/embeddings/llamagate-1/embeddings.json" docs/benchmarks/embeddings-llamagate.json
cp "$OUT/embeddings/llama-server-1/embeddings.json" docs/benchmarks/embeddings-llama-server.json
echo "== done: $OUT/summary.md"
