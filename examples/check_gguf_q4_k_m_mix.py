#!/usr/bin/env python3
"""Checks `peft export gguf --type q4_k_m` against llama.cpp's own quantizer, tensor by tensor.

For each model folder it exports an f32 GGUF and a q4_k_m GGUF with `peft`, has llama.cpp
quantize the f32 file to Q4_K_M (`llama_model_quantize`, what `llama-quantize FILE Q4_K_M` runs:
no importance matrix, the default mix of `llama_tensor_get_type` in src/llama-quant.cpp), and
requires both files to hold the same tensors (llama.cpp reorders them by layer) with the same
ggml types, dims and bytes. It reports the count of tensors per type.

`--synthetic-chatglm DIR` first writes a random ChatGLM2 (8 layers, hidden 256, ffn 512: rows
of whole 256-value super-blocks, so the mix's Q4_K / Q6_K choices per layer show rather than
their fallbacks) with chatglm-tiny's tokenizer into DIR and checks it too.

Usage: check_gguf_q4_k_m_mix.py --peft BIN --work DIR [--model DIR ...]
                                [--synthetic-chatglm DIR --tokenizer-from DIR] [--json OUT]
Needs: llama_cpp (llama-cpp-python), gguf (gguf-py), numpy.
"""
import argparse
import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter

import numpy as np
import llama_cpp
from gguf import GGUFReader


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def save_safetensors(tensors, path):
    """A safetensors file (F32 only): u64 header length, JSON header, little-endian data."""
    header, blobs, at = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def synthetic_chatglm(out, tokenizer_from):
    """A ChatGLM2 config and random weights (seeded) in THUDM's key names."""
    layers, hidden, heads, head_dim, groups, ffn, vocab = 8, 256, 4, 64, 2, 512, 512
    os.makedirs(out, exist_ok=True)
    config = json.load(open(os.path.join(tokenizer_from, "config.json")))
    config.update({"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
                   "kv_channels": head_dim, "multi_query_attention": True,
                   "multi_query_group_num": groups, "ffn_hidden_size": ffn,
                   "padded_vocab_size": vocab, "vocab_size": vocab})
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        if os.path.exists(os.path.join(tokenizer_from, f)):
            shutil.copy(os.path.join(tokenizer_from, f), os.path.join(out, f))
    rng = np.random.default_rng(19)
    normal = lambda *shape: rng.normal(0, 0.02, shape).astype(np.float32)
    qkv = (heads + 2 * groups) * head_dim
    t = {"transformer.embedding.word_embeddings.weight": normal(vocab, hidden)}
    for l in range(layers):
        p = f"transformer.encoder.layers.{l}."
        t[p + "input_layernorm.weight"] = 1 + normal(hidden)
        t[p + "self_attention.query_key_value.weight"] = normal(qkv, hidden)
        t[p + "self_attention.query_key_value.bias"] = normal(qkv)
        t[p + "self_attention.dense.weight"] = normal(hidden, heads * head_dim)
        t[p + "post_attention_layernorm.weight"] = 1 + normal(hidden)
        t[p + "mlp.dense_h_to_4h.weight"] = normal(2 * ffn, hidden)
        t[p + "mlp.dense_4h_to_h.weight"] = normal(hidden, ffn)
    t["transformer.encoder.final_layernorm.weight"] = 1 + normal(hidden)
    t["transformer.output_layer.weight"] = normal(vocab, hidden)
    save_safetensors(t, os.path.join(out, "model.safetensors"))
    return out


def llama_cpp_q4_k_m(src, dst):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize({src}) failed: {rc}")


def tensors(path):
    r = GGUFReader(path)
    return [(t.name, t.tensor_type.name, [int(d) for d in t.shape], bytes(t.data.tobytes())) for t in r.tensors]


def check(a, model, tag):
    w = lambda n: os.path.join(a.work, f"{tag}-{n}")
    run([a.peft, "export", "gguf", "--model", model, "--out", w("f32.gguf"), "--type", "f32", "--force"])
    run([a.peft, "export", "gguf", "--model", model, "--out", w("ours-q4_k_m.gguf"), "--type", "q4_k_m", "--force"])
    llama_cpp_q4_k_m(w("f32.gguf"), w("llama-cpp-q4_k_m.gguf"))
    ours, theirs = tensors(w("ours-q4_k_m.gguf")), tensors(w("llama-cpp-q4_k_m.gguf"))
    r = {"tensors": len(ours), "llama_cpp_tensors": len(theirs)}
    # llama.cpp writes the tensors sorted by layer, then by name (`weight_name_comparer` of its
    # model loader); the order does not matter to a reader, so only the set is compared.
    r["same_names"] = sorted(t[0] for t in ours) == sorted(t[0] for t in theirs)
    theirs_by = {t[0]: t for t in theirs}
    r["types"] = dict(sorted(Counter(t[1] for t in ours).items()))
    r["llama_cpp_types"] = dict(sorted(Counter(t[1] for t in theirs).items()))
    diff = []
    for name, ty, shape, data in ours:
        o = theirs_by.get(name)
        if o is None:
            diff.append({"tensor": name, "missing_in_llama_cpp": True})
        elif (ty, shape) != (o[1], o[2]) or data != o[3]:
            diff.append({"tensor": name, "ours": ty, "llama_cpp": o[1], "dims": [shape, o[2]],
                         "same_bytes": data == o[3]})
    r["differing"] = diff
    r["ok"] = r["same_names"] and len(ours) == len(theirs) and not diff
    return r


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peft", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--model", action="append", default=[])
    p.add_argument("--synthetic-chatglm")
    p.add_argument("--tokenizer-from", help="a ChatGLM folder whose config and tokenizer the synthetic model takes")
    p.add_argument("--json")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    models = list(a.model)
    if a.synthetic_chatglm:
        models.append(synthetic_chatglm(a.synthetic_chatglm, a.tokenizer_from))
    report = {"llama_cpp_python": llama_cpp.__version__, "models": {}}
    for i, m in enumerate(models):
        report["models"][m] = check(a, m, f"m{i}")
    report["ok"] = all(r["ok"] for r in report["models"].values())
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        open(a.json, "w").write(text + "\n")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
