#!/usr/bin/env python3
"""Checks our f16 and q8_0 GGUF exports with a llama.cpp built with its BLAS backend.

llama.cpp's default CPU `mul_mat` rounds the activations to the weight type's `vec_dot_type`
(f16 for F16 weights, Q8_0 blocks for Q8_0), so its logits for an f16 or q8_0 file move by ~6e-2
on SmolLM2 whatever the file holds (see `check_gguf_llama_cpp.py`). llama.cpp's BLAS backend
(`GGML_BLAS=ON`) takes every product of a batch of at least 32 tokens instead: it widens the
weights to f32 (F16, or dequantized Q8_0 blocks) and calls sgemm with the f32 activations. With it,
llama.cpp computes the model the file defines in f32, so the file itself is what is compared:
  - f16: llama.cpp's logits vs ours with `--base-dtype f16` (the same rounded weights), every
    position, within 1e-3;
  - q8_0: llama.cpp's logits vs ours on the same file (`--model file.gguf` keeps its Q8_0 blocks),
    within 1e-3, and 16 greedy tokens per text equal: llama.cpp picks each one from a whole-sequence
    evaluation (so every step stays on the BLAS path) and ours are read teacher-forced.
The texts are long enough (>= 32 tokens) for the BLAS path. Exits 1 when a check fails.

Build such a llama.cpp (OpenBLAS from the distribution, `apt-get install libopenblas-dev`):
  python3 -m venv V && CMAKE_ARGS="-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS" \
      V/bin/pip install --no-cache-dir llama-cpp-python==0.3.36 numpy
Usage: check_gguf_llama_cpp_blas.py --peft BIN --model DIR --work DIR [--json OUT]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import llama_cpp

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
    "capital of Germany; both are large cities with long histories and many museums.",
    "今天天气很好，我们去公园散步吧。房间很干净，服务也好。早餐有各式各样的菜，感觉冷冰冰的，吃得很少。",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # recursion\n\n"
    "for i in range(10):\n    print(i, fib(i))  # 🐍\n",
]
BOUND = 1e-3
MIN_BATCH = 32  # ggml-blas takes a product when every dimension is at least 32


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def ours(a, model, extra=(), texts=(), ids=()):
    """Our ids and all-position logits from `peft export logits`."""
    out = os.path.join(a.work, "ours.json")
    cmd = [a.peft, "export", "logits", "--model", model, "--out", out, *extra]
    for t in texts:
        cmd += ["--text", t]
    for i in ids:
        cmd += ["--ids", ",".join(map(str, i))]
    run(cmd)
    meta = json.load(open(out))
    flat = np.fromfile(out[: -len(".json")] + ".f32", dtype="<f4")
    at, logits = 0, []
    for i in meta["ids"]:
        n = len(i) * meta["vocab"]
        logits.append(flat[at : at + n].reshape(len(i), meta["vocab"]))
        at += n
    return meta["ids"], logits


def load(path):
    # An f32 KV cache: llama.cpp's default f16 cache alone moves logits by ~1e-3.
    return llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=512, n_batch=512, n_threads=2,
                           verbose=False, seed=0, type_k=0, type_v=0)


def whole(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def max_diff(llm, ids, logits):
    return max(float(np.abs(whole(llm, i) - l).max()) for i, l in zip(ids, logits))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peft", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--json")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    report, failed = {}, []
    files = {}
    for ty in ["f16", "q8_0"]:
        files[ty] = os.path.join(a.work, f"model-{ty}.gguf")
        run([a.peft, "export", "gguf", "--model", a.model, "--out", files[ty], "--type", ty, "--force"])

    ids, logits = ours(a, a.model, ["--base-dtype", "f16"], texts=TEXTS)
    short = [len(i) for i in ids if len(i) < MIN_BATCH]
    if short:
        sys.exit(f"texts of {short} tokens are below the BLAS path's {MIN_BATCH}")
    report["tokens"] = [len(i) for i in ids]
    report["f16_max_abs_diff"] = max_diff(load(files["f16"]), ids, logits)
    if report["f16_max_abs_diff"] > BOUND:
        failed.append("f16")

    q8 = load(files["q8_0"])
    _, logits = ours(a, files["q8_0"], ids=ids)
    report["q8_0_same_file_max_abs_diff"] = max_diff(q8, ids, logits)
    if report["q8_0_same_file_max_abs_diff"] > BOUND:
        failed.append("q8_0 logits")
    seqs = []
    for i in ids:
        seq = list(i)
        for _ in range(16):
            seq.append(int(np.argmax(whole(q8, seq)[-1])))
        seqs.append(seq)
    _, logits = ours(a, files["q8_0"], ids=seqs)
    equal = sum(int(np.argmax(l[len(i) - 1 + k])) == s[len(i) + k]
                for i, s, l in zip(ids, seqs, logits) for k in range(16))
    report["q8_0_greedy_equal"] = f"{equal}/{16 * len(ids)}"
    if equal != 16 * len(ids):
        failed.append("q8_0 greedy")

    report["failed"] = failed
    print(json.dumps(report, indent=1))
    if a.json:
        json.dump(report, open(a.json, "w"), indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
