#!/usr/bin/env python3
"""Writes a label task's records in an order for `peft compare --no-shuffle` / `peft train
--no-shuffle`: every batch of B records holds B/2 of each of two labels, and records of similar
length share a batch (each label's records sorted by length, the i-th pairs of both labels
together), so a batch pads little; the batches themselves are in a seeded random order.

    balanced_order.py IN.jsonl OUT.jsonl [--batch 4] [--seed 0] [--val VAL.jsonl --val-per-label 100]

With --val, first carves VAL.jsonl (val-per-label records of each label, seeded pick) from IN
and orders only the rest (a validation split for tuning: never tune on the test file).
"""
import argparse
import json
import random


def main():
    p = argparse.ArgumentParser()
    p.add_argument("inp")
    p.add_argument("out")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val")
    p.add_argument("--val-per-label", type=int, default=100)
    a = p.parse_args()
    rng = random.Random(a.seed)
    records = [json.loads(line) for line in open(a.inp, encoding="utf-8") if line.strip()]
    labels = sorted({r["output"] for r in records})
    if len(labels) != 2 or a.batch % 2:
        raise SystemExit(f"needs two labels and an even batch, got {labels} and {a.batch}")
    by = {label: [r for r in records if r["output"] == label] for label in labels}
    if a.val:
        val = []
        for label in labels:
            rng.shuffle(by[label])
            val += by[label][: a.val_per_label]
            by[label] = by[label][a.val_per_label :]
        rng.shuffle(val)
        write(a.val, val)
    half = a.batch // 2
    n = min(len(v) for v in by.values()) // half
    for label in labels:
        by[label].sort(key=lambda r: len(r["instruction"]) + len(r["input"]))
    batches = []
    for i in range(n):
        pos, neg = (by[label][i * half : (i + 1) * half] for label in labels)
        batch = [r for pair in zip(pos, neg) for r in pair]
        batches.append(batch)
    rng.shuffle(batches)
    write(a.out, [r for b in batches for r in b])


def write(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
