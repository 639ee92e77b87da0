#!/usr/bin/env python3
"""Builds datasets/chatterbot/{english,chinese}.jsonl (sharegpt format) from chatterbot-corpus.

Source: chatterbot-corpus==1.3.3 (BSD-3-Clause), files chatterbot_corpus/data/<language>/*.yml.
Each YAML file holds `conversations:`, a list of conversations, each a list of turns that
alternate between the two speakers. We read the corpus' YAML subset with a small reader (plain,
quoted and `|` block scalars), so the script needs only the standard library.

    pip download --no-deps chatterbot-corpus==1.3.3 -d /tmp/pkgs
    python3 -m zipfile -e /tmp/pkgs/chatterbot_corpus-1.3.3-py2.py3-none-any.whl /tmp/pkgs/chatterbot
    python3 datasets/scripts/chatterbot.py /tmp/pkgs/chatterbot datasets/chatterbot
"""

import argparse
import json
import re
from pathlib import Path

LANGUAGES = ["english", "chinese"]
ITEM = re.compile(r"^(- - |  - )(.*)$")


def scalar(first, lines, i):
    """The scalar starting with `first` (the text after the dash); returns (value, next line index)."""
    if first in ("|", "|-"):
        block = []
        while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
            block.append(lines[i][4:])
            i += 1
        text = "\n".join(block).rstrip("\n")
        return (text if first == "|-" else text + "\n"), i
    if first.startswith("'") or first.startswith('"'):
        quote, parts = first[0], [first]
        while not closed(parts[-1] if len(parts) > 1 else first[1:], quote):
            parts.append(lines[i].strip())
            i += 1
        return unquote(parts, quote), i
    # A plain scalar continues on lines indented past the dash, folded with spaces.
    parts = [first.strip()]
    while i < len(lines) and lines[i].startswith("    ") and lines[i].strip():
        parts.append(lines[i].strip())
        i += 1
    return " ".join(parts), i


def closed(text, quote):
    """Whether a quoted scalar's text ends with an unescaped closing quote."""
    stripped = text.rstrip()
    if quote == "'":
        return stripped.endswith("'") and (len(stripped) - len(stripped.rstrip("'"))) % 2 == 1
    return stripped.endswith('"') and not stripped.endswith('\\"')


def unquote(parts, quote):
    """YAML flow folding: line breaks become spaces, empty lines become newlines."""
    folded = ""
    for k, part in enumerate(parts):
        if k == 0:
            folded = part
        elif part == "":
            folded += "\n"
        else:
            folded += ("" if folded.endswith("\n") else " ") + part
    body = folded.strip()[1:-1]
    if quote == "'":
        return body.replace("''", "'")
    return json.loads('"' + body + '"')


def read_conversations(path):
    """The `conversations:` list of one corpus file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    conversations, i, inside = [], 0, False
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.strip() and not line.startswith((" ", "-")):
            inside = line.startswith("conversations:")
            continue
        if inside and line.startswith("- ") and not line.startswith("- - "):
            # A bare string where a conversation belongs (one slip in english/trivia.yml): skip it.
            conversations.append(None)
            continue
        match = ITEM.match(line)
        if not inside or not match:
            continue
        value, i = scalar(match.group(2), lines, i)
        if match.group(1) == "- - ":
            conversations.append([])
        if conversations[-1] is not None:
            conversations[-1].append(str(value))
    return [c for c in conversations if c is not None]


def to_sharegpt(turns):
    """Alternating human/gpt turns; a trailing unanswered turn is dropped."""
    turns = turns[: len(turns) // 2 * 2]
    return {"conversations": [{"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(turns)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus_dir", type=Path, help="the unzipped wheel (holds chatterbot_corpus/)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--max-chars", type=int, default=400, help="drop long conversations (e.g. code listings)")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for language in LANGUAGES:
        seen, records = set(), []
        for path in sorted((args.corpus_dir / "chatterbot_corpus" / "data" / language).glob("*.yml")):
            for turns in read_conversations(path):
                turns = [t.strip() for t in turns]
                key = tuple(turns)
                if len(turns) < 2 or any(not t for t in turns) or sum(map(len, turns)) > args.max_chars or key in seen:
                    continue
                seen.add(key)
                records.append(to_sharegpt(turns))
        out = args.out_dir / f"{language}.jsonl"
        with out.open("w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"wrote {out}: {len(records)} conversations, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
