#!/usr/bin/env python3
"""Builds datasets/general_text.jsonl: the general-text set of `peft compare`'s forgetting
metric (the rise of mean token cross-entropy over the base model on text an adapter was not
trained on). 64 English and 64 Chinese `text` records: the longer replies (>= 40 characters
English, >= 16 Chinese) of chatterbot-corpus conversations (BSD-3-Clause), one per distinct
text, none that datasets/tiny_instruct.jsonl trains on, sampled with a fixed seed.

    python3 datasets/scripts/general_text.py datasets/chatterbot datasets/tiny_instruct.jsonl datasets/general_text.jsonl
"""

import argparse
import json
import random
from pathlib import Path


def replies(path, min_chars):
    seen, out = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        for turn in json.loads(line)["conversations"]:
            text = " ".join(turn["value"].split())
            if turn["from"] == "gpt" and len(text) >= min_chars and text not in seen:
                seen.add(text)
                out.append(text)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chatterbot_dir", type=Path)
    parser.add_argument("tiny_instruct", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()

    trained = {json.loads(l)["output"] for l in args.tiny_instruct.read_text(encoding="utf-8").splitlines()}
    rng = random.Random(args.seed)
    records = []
    for name, min_chars in [("english.jsonl", 40), ("chinese.jsonl", 16)]:
        texts = [t for t in replies(args.chatterbot_dir / name, min_chars) if t not in trained]
        records += sorted(rng.sample(texts, args.count))
    with args.out.open("w", encoding="utf-8") as f:
        for text in records:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(records)} records")


if __name__ == "__main__":
    main()
