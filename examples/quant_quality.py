"""Base eval loss of SmolLM2 under each 4/8-bit scheme, computed by the reference libraries, to
check `peft eval --quantize-base` against them (issue 17's quality bound; README "Quantized base").

For every scheme the seven projections of every layer (q/k/v/o/gate/up/down) are replaced by
dequantize(quantize(W)) and the model is scored as `peft eval --limit 100` scores it: the
tokenizer's chat template, the prompt and the learned assistant turn ("正面<|im_end|>\n")
tokenized each on its own without specials (`src/data/encode.rs`), the mean loss over learned
tokens. The tied embedding / lm_head stays f32 (bitsandbytes skips lm_head; PEFT's QLoRA too).

Schemes: f32; `q8_0`, `q4_0`, `q4_1` by gguf-py's `quants` (the same bytes as ours, byte-exact);
`nf4` by bitsandbytes' `quantize_4bit`/`dequantize_4bit` (blocksize 64, no double quant);
`q4_0s`/`q4_0sw`: Q4_0 blocks with llama.cpp's `make_qx_quants` scale search (uniform / x²
weights, our `quant::search`), prototyped here in numpy.

Run: /tmp/ref/bin/python examples/quant_quality.py [MODEL_DIR] [--schemes f32,nf4,...]
(gguf-py is taken from /var/tmp/peft-cache/llama-venv, appended to sys.path; `GGUF_PY` overrides).
"""
import argparse
import glob
import json
import math
import os
import pathlib
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def gguf_quants():
    site = os.environ.get("GGUF_PY") or next(
        iter(glob.glob("/var/tmp/peft-cache/llama-venv/lib/python3*/site-packages")), None
    )
    if site:
        sys.path.append(site)
    from gguf import GGMLQuantizationType, quants

    return quants, GGMLQuantizationType


def records(tok, path, limit):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(out) == limit:
                break
            r = json.loads(line)
            user = f"{r['instruction']}\n{r['input']}" if r.get("input") else r["instruction"]
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
            prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(msgs, tokenize=False)
            assert full.startswith(prompt)
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            a = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
            out.append((p + a, [-100] * len(p) + a))
    return out


@torch.no_grad()
def eval_loss(model, recs):
    total, n = 0.0, 0
    for ids, labels in recs:
        # The head only at the learned positions (a few per record): the same logits, less work.
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, :-1]
        y = torch.tensor(labels[1:])
        keep = y != -100
        logits = model.lm_head(hidden[keep]).float()
        total += torch.nn.functional.cross_entropy(logits, y[keep], reduction="sum").item()
        n += int(keep.sum())
    return total / n, n


def nearest_int(v):
    # ggml's nearest_int: round half to even via the 1.5·2^23 trick, as np.rint.
    return np.rint(v).astype(np.int32)


def q4_0_search(w, weighted, block=32):
    """Q4_0 blocks (32 values, d·(q−8), d in f16) with make_qx_quants(nmax=8, rmse_type 1/2)."""
    x = w.reshape(-1, block).astype(np.float32)
    amax_i = np.abs(x).argmax(axis=1)
    mx = x[np.arange(len(x)), amax_i]
    safe = np.where(mx == 0, 1.0, mx)
    wt = x * x if weighted else np.ones_like(x)
    best_d = np.zeros(len(x), np.float32)
    best_score = np.full(len(x), -np.inf, np.float32)
    for step in [0] + [s for s in range(-9, 10) if s != 0]:
        iscale = (-(8 + 0.1 * step) / safe).astype(np.float32)
        l = np.clip(nearest_int(iscale[:, None] * x), -8, 7).astype(np.float32)
        sumlx = (wt * x * l).sum(1)
        suml2 = (wt * l * l).sum(1)
        d = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, 1), 0)
        score = d * sumlx
        take = (suml2 > 0) & (score > best_score)
        best_d = np.where(take, d, best_d)
        best_score = np.where(take, score, best_score)
    d16 = best_d.astype(np.float16).astype(np.float32)
    inv = np.where(d16 != 0, 1.0 / np.where(d16 != 0, d16, 1), 0)
    q = np.clip(nearest_int(x * inv[:, None]), -8, 7)
    return (q * d16[:, None]).reshape(w.shape)


def fake_quant(scheme, w, quants, T):
    a = w.numpy()
    if scheme in ("q8_0", "q4_0", "q4_1"):
        ty = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1}[scheme]
        return torch.from_numpy(quants.dequantize(quants.quantize(a, ty), ty).reshape(a.shape))
    if scheme == "q4_0s":
        return torch.from_numpy(q4_0_search(a, weighted=False))
    if scheme == "q4_0s16":  # smaller blocks: 16 values a scale (5 bits/weight; not a ggml type)
        return torch.from_numpy(q4_0_search(a, weighted=False, block=16))
    if scheme == "q4_0sw":
        return torch.from_numpy(q4_0_search(a, weighted=True))
    if scheme == "nf4":
        import bitsandbytes.functional as F

        q, state = F.quantize_4bit(w.contiguous(), blocksize=64, quant_type="nf4")
        return F.dequantize_4bit(q, state, blocksize=64, quant_type="nf4").reshape(w.shape)
    raise SystemExit(f"unknown scheme {scheme}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="/var/tmp/peft-cache/SmolLM2-135M-Instruct")
    ap.add_argument("--data", default=str(ROOT / "datasets/sentiment_zh/eval.jsonl"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--schemes", default="f32,q4_0,nf4,q4_0s,q4_0sw,q4_1,q8_0")
    ap.add_argument("--mse-only", action="store_true", help="weight error only, no eval")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    tok = AutoTokenizer.from_pretrained(args.model)
    recs = [] if args.mse_only else records(tok, args.data, args.limit)
    quants, T = gguf_quants()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    linears = [(n, m) for n, m in model.named_modules() if n.split(".")[-1] in PROJ]
    orig = {n: m.weight.data.clone() for n, m in linears}
    for scheme in args.schemes.split(","):
        err, ref = 0.0, 0.0
        for n, m in linears:
            w = orig[n]
            q = w if scheme == "f32" else fake_quant(scheme, w, quants, T).to(torch.float32)
            err += float(((q - w).double() ** 2).sum())
            ref += float((w.double() ** 2).sum())
            m.weight.data.copy_(q)
        loss, n = (math.nan, 0) if args.mse_only else eval_loss(model, recs)
        print(json.dumps({"scheme": scheme, "eval_loss": round(loss, 4), "tokens": n,
                          "rel_weight_mse": err / ref if ref else 0.0}), flush=True)


if __name__ == "__main__":
    main()
