#!/usr/bin/env python3
"""The chat task's split, shared by examples/quant_bound.sh and examples/compare_chat.sh:
datasets/chatterbot/english.jsonl with every 8th conversation held out (109 of 874), the rest
(765) to train on. Deterministic.

    chat_split.py TRAIN.jsonl EVAL.jsonl
"""
import sys

train, held_out = sys.argv[1], sys.argv[2]
lines = open("datasets/chatterbot/english.jsonl", encoding="utf-8").read().splitlines()
with open(train, "w", encoding="utf-8") as tr, open(held_out, "w", encoding="utf-8") as ev:
    for i, line in enumerate(lines):
        (ev if i % 8 == 7 else tr).write(line + "\n")
