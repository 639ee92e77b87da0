"""PyTorch + PEFT LoRA training step with the frozen base in f32 or bf16 (issue 17's reference row),
on a SmolLM2-135M-shaped Llama, CPU. The model is built directly in the base dtype (no f32 copy in
the peak RSS); PEFT keeps the LoRA weights in f32 (`autocast_adapter_dtype`, its default), as ours.
AUTOCAST=1 runs the step under `torch.autocast("cpu", dtype=torch.bfloat16)` (with DTYPE=f32: an f32
base whose matmuls autocast computes in bf16, through oneDNN's AVX512-BF16/AMX kernels where the CPU
has them), the comparison for our `--compute-dtype bf16`.
Usage: DTYPE=bf16 python3 torch_train_base_dtype.py   env: B (4), T (256), STEPS (3), THREADS (2), R (8), AUTOCAST (0)"""
import os, torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM
from common import emit, smollm2_config, timed

dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[os.environ.get("DTYPE", "bf16")]
B, T, steps, r = (int(os.environ.get(k, d)) for k, d in (("B", 4), ("T", 256), ("STEPS", 3), ("R", 8)))
torch.manual_seed(0)
torch.set_default_dtype(dtype)
m = LlamaForCausalLM(smollm2_config())
torch.set_default_dtype(torch.float32)
m = get_peft_model(m, LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
ids = torch.randint(0, 49152, (B, T))
m.train()
autocast = os.environ.get("AUTOCAST", "0") == "1"
def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = m(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
s = timed(step, steps)
emit(bench="train_step_base_dtype", base_dtype=os.environ.get("DTYPE", "bf16") + (" + bf16 autocast" if autocast else ""), batch=B, seq=T, rank=r,
     adapter_dtype=str(params[0].dtype), step_s=round(s, 4), tokens_per_s=round(B * T / s, 1))
