#!/usr/bin/env bash
# Issue 17's quality bound, measured so that training noise cannot decide it: the eval loss after
# the same short LoRA run on a quantized frozen base against the f32 base, for several seeds, on
# two tasks:
#   chat       chatterbot English conversations (datasets/chatterbot/english.jsonl): every 8th
#              conversation held out (109), the rest trained on; the loss is that of the held-out
#              replies, so it reads every learned token, not one label;
#   sentiment  the README's 16-step sentiment_zh run, scored on the first 100 eval reviews.
# Each (task, seed) trains once per base with the same data order, init and dropout masks; the
# table gives each base's mean ± sd over the seeds and its mean ratio to f32 on the same seeds.
#
#   examples/quant_bound.sh                       # BASES="f32 int4", SEEDS="1 2 3", both tasks
#   BASES="f32 int8 int4 nf4" TASKS=chat examples/quant_bound.sh
#
# The peft binary is $PEFT_BIN, else `cargo run --quiet --`; results land in $OUT
# (default runs/quant-bound: results.jsonl, one line per run, and the logs).
set -euo pipefail
cd "$(dirname "$0")/.."
BASES="${BASES:-f32 int4}"
SEEDS="${SEEDS:-1 2 3}"
TASKS="${TASKS:-chat sentiment}"
CHAT_STEPS="${CHAT_STEPS:-48}"
SENTIMENT_STEPS="${SENTIMENT_STEPS:-16}"
MODEL="${PEFT_CACHE:-/var/tmp/peft-cache}/SmolLM2-135M-Instruct"
OUT="${OUT:-runs/quant-bound}"
[ -f "$MODEL/model.safetensors" ] || examples/get_smollm2.sh
if [ -n "${PEFT_BIN:-}" ]; then PEFT=("$PEFT_BIN"); else PEFT=(cargo run --quiet --); fi
mkdir -p "$OUT/logs"
results="$OUT/results.jsonl"

# The chat split: deterministic, every 8th conversation held out.
python3 examples/chat_split.py "$OUT/chat_train.jsonl" "$OUT/chat_eval.jsonl"

task_args() {
  case "$1" in
    chat) train=("--data" "$OUT/chat_train.jsonl" "--max-steps" "$CHAT_STEPS")
          eval=("--data" "$OUT/chat_eval.jsonl") ;;
    sentiment) train=("--data" datasets/sentiment_zh/train.jsonl "--max-steps" "$SENTIMENT_STEPS")
               eval=("--data" datasets/sentiment_zh/eval.jsonl "--limit" 100) ;;
    *) echo "unknown task $1 (chat, sentiment)" >&2; exit 2 ;;
  esac
}

for task in $TASKS; do
  task_args "$task"
  for seed in $SEEDS; do
    for base in $BASES; do
      name="$task-$base-s$seed"
      if grep -q "\"run\": \"$name\"" "$results" 2>/dev/null; then continue; fi
      quant=()
      [ "$base" != f32 ] && quant=(--quantize-base "$base")
      rm -rf "$OUT/$name"
      "${PEFT[@]}" train --model "$MODEL" "${train[@]}" --adapter-config adapters/lora.json \
        --max-len 256 --batch-size 4 --lr 3e-4 --lr-scheduler constant --seed "$seed" \
        "${quant[@]}" --out "$OUT/$name" > "$OUT/logs/$name.train.log" 2>&1
      after=$("${PEFT[@]}" eval --model "$MODEL" --adapter "$OUT/$name" "${eval[@]}" \
        --batch-size 8 "${quant[@]}" --json 2> "$OUT/logs/$name.eval.log")
      python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(json.dumps({"run": sys.argv[2], "task": sys.argv[3], "base": sys.argv[4], "seed": int(sys.argv[5]), "eval_loss": r["loss"], "tokens": r["tokens"]}))' \
        "$after" "$name" "$task" "$base" "$seed" >> "$results"
      echo "$name: eval loss $(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["loss"], 4))' "$after")"
    done
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["task"], {}).setdefault(r["base"], {})[r["seed"]] = r["eval_loss"]
for task, bases in by.items():
    f32 = bases.get("f32", {})
    print(f"\n{task}: eval loss after the run (mean ± sd over seeds), ratio to f32 on the same seeds")
    print("| base | seeds | eval loss | per seed | vs f32 |")
    print("|---|---|---|---|---|")
    for base, seeds in bases.items():
        v = [seeds[s] for s in sorted(seeds)]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        common = [s for s in sorted(seeds) if s in f32]
        ratio = statistics.mean(seeds[s] for s in common) / statistics.mean(f32[s] for s in common) if common else float("nan")
        per = ", ".join(f"{seeds[s]:.4f}" for s in sorted(seeds))
        print(f"| {base} | {len(v)} | {statistics.mean(v):.4f} ± {sd:.4f} | {per} | {100 * (ratio - 1):+.1f}% |")
PY
