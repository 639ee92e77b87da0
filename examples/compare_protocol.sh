#!/usr/bin/env bash
# The full method comparison (issue 18): SmolLM2-135M-Instruct on the bundled Chinese review
# sentiment task at the main job's setting (label-balanced, length-matched batches of 4, 10
# warm-up steps, linear decay), all ten methods, 3 seeds, learning rates swept on a validation
# split of the training data, forgetting on the bundled general text; results in
# examples/results/compare-protocol/. Long (about 10 minutes per method and seed on 2 cores, the
# sweep as much again): run it on a quiet machine. Interrupted? Run it again: it resumes.
#
#   examples/compare_protocol.sh [STEPS]        # STEPS per method, default 100
#
# The peft binary is $PEFT_BIN, else the one `cargo build` makes (the dev profile is optimised).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-100}"
MODEL="${PEFT_CACHE:-/var/tmp/peft-cache}/SmolLM2-135M-Instruct"
OUT="examples/results/compare-protocol"
[ -f "$MODEL/model.safetensors" ] || examples/get_smollm2.sh
if [ -z "${PEFT_BIN:-}" ]; then
    cargo build --quiet
    PEFT_BIN="${CARGO_TARGET_DIR:-target}/debug/peft"
fi
RESUME=()
[ -f "$OUT/results.json" ] && RESUME=(--resume)
start=$(date +%s)
"$PEFT_BIN" compare --model "$MODEL" \
    --data datasets/sentiment_zh/train.jsonl --eval-data datasets/sentiment_zh/eval.jsonl \
    --methods lora,rslora,dora,adalora,ia3,prompt,ptuning,prefix,ptuning-v2,llama-adapter \
    --budget "steps=$STEPS" --batch-size 4 --max-len 256 --balance-labels --group-by-length \
    --lr-scheduler linear --warmup-steps 10 \
    --seeds 1,2,3 --lr-sweep 3 --save-preset "$OUT/chosen_rates.toml" \
    --out "$OUT" "${RESUME[@]}"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min" | tee -a "$OUT/wall_time.txt"
