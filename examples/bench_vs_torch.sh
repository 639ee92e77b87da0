#!/usr/bin/env bash
# Runs our benchmarks and the PyTorch + PEFT references (examples/bench) in the same session on the
# same machine, and prints one table with the ratios. Needs a Python with torch, transformers and
# peft: REF_PYTHON (default /tmp/ref/bin/python; set it up with
#   python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch transformers==5.24.0 peft==0.21.2).
# Usage: examples/bench_vs_torch.sh [BENCH_DIR]   (BENCH_DIR holds torch_forward.py etc.)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${1:-examples/bench}"
PY="${REF_PYTHON:-/tmp/ref/bin/python}"
THREADS="${THREADS:-$(nproc)}"
OUT=bench-out
mkdir -p "$OUT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/peft-target}"
cargo build --examples --quiet

# The machine these numbers come from: CPU model, AVX-512 or not, threads, load before the run.
python3 - "$OUT/machine.json" "$THREADS" <<'PY'
import json, os, sys
flags = open("/proc/cpuinfo").read()
model = next((l.split(":", 1)[1].strip() for l in flags.splitlines() if l.startswith("model name")), "?")
kind = "AVX-512" if " avx512f" in flags else ("AVX2" if " avx2" in flags else "baseline x86-64")
json.dump({"cpu": model, "simd": kind, "cores": os.cpu_count(), "threads": int(sys.argv[2]),
           "load_before": os.getloadavg()}, open(sys.argv[1], "w"))
PY
"$CARGO_TARGET_DIR/debug/examples/bench_forward" --threads "$THREADS" --out "$OUT/forward.json" > /dev/null
"$CARGO_TARGET_DIR/debug/examples/bench_train" --threads "$THREADS" --steps "${STEPS:-3}" --with-full --out "$OUT/train.json" > /dev/null
# The step by op family, ours (fused and composition) then torch.profiler's, same shapes.
"$CARGO_TARGET_DIR/debug/examples/bench_ops" --threads "$THREADS" --out "$OUT/ops.json" > "$OUT/ops.md"
(
  cd "$BENCH"
  for b in 1 8; do THREADS=$THREADS B=$b NEW=16 "$PY" torch_forward.py; done
  THREADS=$THREADS B=1 NEW=256 "$PY" torch_forward.py | grep generate
  THREADS=$THREADS STEPS="${STEPS:-3}" "$PY" torch_train.py lora
  THREADS=$THREADS STEPS="${STEPS:-3}" "$PY" torch_train.py full
) > "$OUT/torch.jsonl"
(cd "$BENCH" && THREADS=$THREADS "$PY" torch_profile.py 2) > "$OUT/torch_profile.txt" 2>&1 || true
cat "$OUT/ops.md"
sed -n '/^region/,/^total/p' "$OUT/torch_profile.txt"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
ours = {**json.load(open(f"{out}/forward.json")), **json.load(open(f"{out}/train.json"))}
machine = json.load(open(f"{out}/machine.json"))
print(f"{machine['cpu']} ({machine['simd']}), {machine['threads']} threads, "
      f"load before the run {machine['load_before'][0]:.2f}\n")
torch = [json.loads(l) for l in open(f"{out}/torch.jsonl") if l.startswith("{")]
def t(bench, **kw):
    for r in torch:
        if r["bench"] == bench and all(r.get(k) == v for k, v in kw.items()):
            return r
rows = [
    ("prefill, batch 1 × 256 (tokens/s)", ours["prefill_b1_s256_tokens_per_s"], t("prefill", batch=1)["tokens_per_s"]),
    ("prefill, batch 8 × 256 (tokens/s)", ours["prefill_b8_s256_tokens_per_s"], t("prefill", batch=8)["tokens_per_s"]),
    ("greedy generation, 16 new (tokens/s)", ours["generate_16_tokens_per_s"], t("generate", batch=1, new_tokens=16)["tokens_per_s"]),
    ("greedy generation, 256 new (tokens/s)", ours["generate_256_tokens_per_s"], t("generate", batch=1, new_tokens=256)["tokens_per_s"]),
    ("greedy generation, 16 new, bf16 decoding weights (tokens/s)", ours["generate_bf16_16_tokens_per_s"], t("generate", batch=1, new_tokens=16)["tokens_per_s"]),
    ("greedy generation, 256 new, bf16 decoding weights (tokens/s)", ours["generate_bf16_256_tokens_per_s"], t("generate", batch=1, new_tokens=256)["tokens_per_s"]),
    ("LoRA r8 training, batch 4 × 256 (tokens/s)", ours["train_tokens_per_s"], t("train_step", method="lora")["tokens_per_s"]),
    ("LoRA r8 training peak RSS (MiB)", ours["train_peak_rss_mib"], t("train_step", method="lora")["peak_rss_mib"]),
    ("full fine-tuning, batch 4 × 256 (tokens/s)", ours["full_tokens_per_s"], t("train_step", method="full")["tokens_per_s"]),
]
print("| measurement | peft (burn) | PyTorch + PEFT | ratio |\n|---|---|---|---|")
for name, a, b in rows:
    print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
print(f"\nLoRA forward overhead over the base forward: {100 * ours['forward_lora_overhead']:.1f}% "
      f"(base {ours['forward_base_tokens_per_s']:.0f} tokens/s, LoRA {ours['forward_lora_tokens_per_s']:.0f}); "
      f"LoRA forward+backward {ours['forward_backward_lora_tokens_per_s']:.0f} tokens/s")
print(f"Loading {ours['load_params']/1e6:.0f}M parameters: peak RSS {ours['load_peak_rss_mib']:.0f} MiB "
      f"= {ours['load_peak_rss_mib']/ours['load_f32_mib']:.2f}× the f32 size ({ours['load_f32_mib']:.0f} MiB)")
# 619 GFLOP per step for this shape (issue 14's analytic count: forward + input and LoRA grads)
print(f"LoRA step / our full fine-tuning step: {ours['train_step_s'] / ours['full_step_s']:.2f}")
print(f"LoRA training step: {ours['train_step_s']:.2f} s = {619 / ours['train_step_s']:.0f} GFLOP/s of the 619 GFLOP step")
json.dump({"ours": ours, "torch": torch, "machine": machine}, open(f"{out}/summary.json", "w"), indent=1)
PY
