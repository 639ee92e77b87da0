#!/usr/bin/env python3
"""Builds datasets/tiny_instruct.jsonl: 64 short alpaca records for the README's one-minute run on
the bundled tiny model. Derived from datasets/chatterbot/english.jsonl (chatterbot-corpus, BSD):
the first exchange of conversations whose prompt and reply are both short, one per prompt.

    python3 datasets/scripts/tiny_instruct.py datasets/chatterbot/english.jsonl datasets/tiny_instruct.jsonl
"""

import argparse
import json
import random
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chatterbot_jsonl", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--max-chars", type=int, default=32)
    parser.add_argument("--seed", type=int, default=20240501)
    args = parser.parse_args()

    pairs, prompts = [], set()
    for line in args.chatterbot_jsonl.read_text(encoding="utf-8").splitlines():
        turns = json.loads(line)["conversations"]
        prompt, reply = turns[0]["value"], turns[1]["value"]
        if len(prompt) <= args.max_chars and len(reply) <= args.max_chars and prompt.lower() not in prompts:
            prompts.add(prompt.lower())
            pairs.append((prompt, reply))
    if len(pairs) < args.count:
        raise SystemExit(f"only {len(pairs)} short pairs, {args.count} needed")
    chosen = random.Random(args.seed).sample(pairs, args.count)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for prompt, reply in chosen:
            f.write(json.dumps({"instruction": prompt, "output": reply}, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {len(chosen)} records from {len(pairs)} short pairs")


if __name__ == "__main__":
    main()
