"""Writes MODEL_DIR's weights with every q/k/v/o/gate/up/down projection replaced by
bitsandbytes' NF4 round trip (`dequantize_4bit(quantize_4bit(W))`, blocksize 64, no double
quantization; what `--quantize-base nf4` holds, bit for bit) as an f32 folder OUT, so a run on the
NF4 base (`--quantize-base nf4`) can be compared with the same run on its dequantized weights in
f32 (README, "Quantized base").

Run: /tmp/ref/bin/python examples/nf4_dequantized_model.py MODEL_DIR OUT
"""
import pathlib
import shutil
import sys

import bitsandbytes.functional as F
import torch
from safetensors.torch import load_file, save_file

src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
tensors = {}
for f in sorted(src.glob("*.safetensors")):
    for k, w in load_file(f).items():
        w = w.float()
        if k.endswith(".weight") and k.split(".")[-2] in names:
            q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
            w = F.dequantize_4bit(q, state)
        tensors[k] = w.contiguous()
save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
for f in src.iterdir():
    if f.suffix != ".safetensors" and f.is_file():
        shutil.copy(f, out / f.name)
print(len(tensors), "tensors written to", out)
