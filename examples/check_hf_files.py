"""Checks that the files `peft train` writes open with the Hugging Face tools a PEFT user has:

- `AutoPeftModelForCausalLM.from_pretrained(OUT)` finds the base model through
  `base_model_name_or_path` and loads the adapter with no missing/unexpected keys;
- `TrainerState.load_from_json(OUT/trainer_state.json)` reads HF Trainer's format, with
  `log_history` entries holding `loss`, `learning_rate`, `grad_norm`, `epoch` (a float), `step`
  and eval entries `eval_loss`;
- `README.md` is a model card whose metadata says `library_name: peft` and `base_model`.

Run it with an older PEFT too (e.g. 0.13.2 with transformers 4.46): the adapter must load there;
the trainer-state and card checks need transformers >= 4.47 / huggingface_hub and are skipped
with --adapter-only.

Usage: python3 examples/check_hf_files.py OUT [--adapter-only]
   (run from the folder `peft train --model` was given relative to, as PEFT resolves it)
Needs: pip install torch transformers peft safetensors
"""
import json
import os
import sys
import warnings

import peft
import transformers
from peft import AutoPeftModelForCausalLM

out = sys.argv[1]
adapter_only = "--adapter-only" in sys.argv[2:]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = AutoPeftModelForCausalLM.from_pretrained(out)
problems = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
assert not problems, problems
print(f"PEFT {peft.__version__} / transformers {transformers.__version__}: AutoPeftModelForCausalLM loaded {out} "
      f"on {model.peft_config['default'].base_model_name_or_path}")
if adapter_only:
    sys.exit(0)

from huggingface_hub import ModelCard
from transformers.trainer_callback import TrainerState

state = TrainerState.load_from_json(os.path.join(out, "trainer_state.json"))
train = [e for e in state.log_history if "loss" in e]
evals = [e for e in state.log_history if "eval_loss" in e]
assert train, "no training entries in log_history"
for e in train:
    assert {"loss", "learning_rate", "grad_norm", "epoch", "step"} <= e.keys(), e
    assert isinstance(e["epoch"], float), e
assert state.global_step == train[-1]["step"], (state.global_step, train[-1])
print(f"TrainerState: {state.global_step} steps, epoch {state.epoch:.3f}, {len(train)} train and {len(evals)} eval log entries")
card = ModelCard.load(os.path.join(out, "README.md"))
assert card.data.library_name == "peft", card.data
assert card.data.base_model == model.peft_config["default"].base_model_name_or_path, card.data
print(f"README.md: model card with base_model {card.data.base_model}, tags {card.data.tags}")
print(json.dumps({"ok": True}))
