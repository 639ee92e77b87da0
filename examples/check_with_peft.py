"""Checks that Hugging Face PEFT loads an adapter written by `peft train`, and that transformers
loads a checkpoint written by `peft merge` from it, with equal logits:

    PEFT(base + our adapter)  ==  transformers(our merged checkpoint)

(`peft merge --verify` separately checks our merged checkpoint against our own base + adapter.)

Usage: python3 examples/check_with_peft.py BASE_DIR ADAPTER_DIR MERGED_DIR
Needs: pip install torch transformers peft safetensors
"""
import sys
import warnings

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base_dir, adapter_dir, merged_dir = sys.argv[1:4]
torch.manual_seed(0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
problems = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
assert not problems, problems
vocab = model.config.vocab_size
ids = (torch.arange(2 * 24).reshape(2, 24) * 7919 + 13) % vocab
with torch.no_grad():
    peft_logits = model(input_ids=ids).logits
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    merged_logits = merged(input_ids=ids).logits
    with model.disable_adapter():
        plain = model(input_ids=ids).logits
diff = (peft_logits - merged_logits).abs().max().item()
effect = (peft_logits - plain).abs().max().item()
print(f"PEFT loaded {adapter_dir}: max |PEFT(base+adapter) - transformers(merged)| = {diff:.2e}; adapter effect {effect:.2e}")
assert effect > 1e-3, "the adapter changed nothing: the check would be vacuous"
assert diff < 1e-4, diff
