#!/usr/bin/env bash
# The comparison's second task, a generative one scored by ROUGE-L: SmolLM2-135M-Instruct learns
# to answer as the chatterbot English conversations do (datasets/chatterbot/english.jsonl; every
# 8th conversation held out, 109, the other 765 trained on, the split examples/quant_bound.sh
# uses). Each held-out conversation's last reply is generated greedily after the turns before it
# and scored by ROUGE-L F1 against the corpus' reply; the table gives the mean with its 95%
# interval, and forgetting on the bundled general text.
#
#   examples/compare_chat.sh                  # METHODS="lora,dora,ia3,prompt,prefix", STEPS=48
#   METHODS=lora,ia3 STEPS=96 examples/compare_chat.sh
#   EVAL_LIMIT=N                              # score the first N held-out conversations only
#
# The peft binary is $PEFT_BIN, else `cargo run --quiet --`; results land in $OUT (default
# runs/compare-chat); an interrupted run continues with RESUME=1.
set -euo pipefail
cd "$(dirname "$0")/.."
METHODS="${METHODS:-lora,dora,ia3,prompt,prefix}"
STEPS="${STEPS:-48}"
OUT="${OUT:-runs/compare-chat}"
MODEL="${PEFT_CACHE:-/var/tmp/peft-cache}/SmolLM2-135M-Instruct"
[ -f "$MODEL/model.safetensors" ] || examples/get_smollm2.sh
if [ -n "${PEFT_BIN:-}" ]; then PEFT=("$PEFT_BIN"); else PEFT=(cargo run --quiet --); fi
split="$OUT.split"
mkdir -p "$split"
python3 examples/chat_split.py "$split/train.jsonl" "$split/eval.jsonl"
LIMIT=()
[ -n "${EVAL_LIMIT:-}" ] && LIMIT=(--eval-limit "$EVAL_LIMIT")
again=(--overwrite)
[ -n "${RESUME:-}" ] && again=(--resume)
start=$(date +%s)
"${PEFT[@]}" compare --model "$MODEL" \
    --data "$split/train.jsonl" --eval-data "$split/eval.jsonl" --task-metric rouge-l \
    --methods "$METHODS" --set lora.lr=1e-3 --budget "steps=$STEPS" --batch-size 4 --max-len 256 \
    --lr-scheduler linear --warmup-steps 5 --max-new-tokens 32 --out "$OUT" "${again[@]}" "${LIMIT[@]}"
echo "wall time: $(( $(date +%s) - start )) s; table: $OUT/results.md"
