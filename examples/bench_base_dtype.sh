#!/usr/bin/env bash
# Issue 17's memory table: one LoRA r8 all-linear run per frozen base (f32, bf16, int8, int4, nf4)
# on SmolLM2-135M-Instruct, batch 4 × 256 packed from datasets/general_text.jsonl (loss on every token,
# as the PyTorch script), peak RSS by /usr/bin/time -v and tokens/s from
# the run's own report; then PyTorch + PEFT with an f32 and a bf16 base in the same session
# (examples/bench/torch_train_base_dtype.py). Run on a quiet machine.
# usage: REF_PYTHON=/tmp/ref/bin/python STEPS=4 examples/bench_base_dtype.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${PEFT_BIN:-${CARGO_TARGET_DIR:-/var/tmp/peft-target}/debug/peft}"
M="${PEFT_SMOLLM2_DIR:-/var/tmp/peft-cache/SmolLM2-135M-Instruct}"
STEPS="${STEPS:-4}" THREADS="${THREADS:-2}"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); avx512: $(grep -qm1 avx512f /proc/cpuinfo && echo yes || echo no); threads $THREADS; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| base | peak RSS (MiB) | tok/s |\n|---|---|---|\n'
for base in ${BASES:-f32 bf16 bf16c int8 int4 nf4}; do
  case $base in
    f32|bf16) flags=(--base-dtype "$base") ;;
    bf16c)
      if ! grep -qm1 avx512_bf16 /proc/cpuinfo; then echo "| ours, bf16c | (no avx512_bf16) | |"; continue; fi
      flags=(--compute-dtype bf16) ;;
    *) flags=(--quantize-base "$base") ;;
  esac
  /usr/bin/time -v "$BIN" --threads "$THREADS" train --model "$M" --data datasets/general_text.jsonl \
    --out "$work/$base" --adapter-config adapters/lora.json --lora-dropout 0 --batch-size 4 --pack 256 \
    --max-len 256 --max-steps "$STEPS" --lr 3e-4 --seed 1 "${flags[@]}" > "$work/$base.log" 2>&1
  rss=$(awk '/Maximum resident/ {printf "%.0f", $6/1024}' "$work/$base.log")
  tps=$(grep -o 'trained .* steps in .* (\([0-9.]*\) tokens/s)' "$work/$base.log" | grep -o '([0-9.]* tokens' | tr -d '( tokens')
  echo "| ours, $base | $rss | $tps |"
done
if [ -n "${REF_PYTHON:-}" ]; then
  for spec in f32:0 bf16:0 f32:1; do
    dtype=${spec%:*} autocast=${spec#*:}
    (cd examples/bench && DTYPE=$dtype AUTOCAST=$autocast THREADS=$THREADS STEPS=$STEPS "$REF_PYTHON" torch_train_base_dtype.py) \
      | "$REF_PYTHON" -c 'import json,sys; j=json.loads(sys.stdin.read()); print("| PyTorch + PEFT, %s | %.0f | %s |" % (j["base_dtype"], j["peak_rss_mib"], j["tokens_per_s"]))'
  done
fi
