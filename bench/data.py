"""Benchmark data built from the demo vocabulary: varied lengths, or fixed-length rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

from demo.base_model import generic_documents
from demo.task import RULES, TASK_WORDS, format_completion, format_prompt


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def write_varied_data(
    out_dir: str | Path, *, n_train: int, n_eval: int, min_words: int = 2, max_words: int = 40
) -> Path:
    """The demo task over word lists of min_words..max_words words (uniform): examples of ~10 to
    ~90 tokens, so a padded batch of 16 is about half padding."""
    rng = random.Random(0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("eval", n_eval)):
        rows = []
        for _ in range(n):
            words = [rng.choice(TASK_WORDS) for _ in range(rng.randint(min_words, max_words))]
            instruction, answer = RULES[rng.choice(sorted(RULES))]
            rows.append(
                {
                    "prompt": format_prompt(instruction, words),
                    "completion": format_completion(answer(words)),
                }
            )
        _write(out / f"{split}.jsonl", rows)
    return out


def write_long_data(out_dir: str | Path, *, n: int, min_chars: int = 4000) -> Path:
    """Examples longer than any benchmarked max_seq_len; with data.too_long=truncate every
    training row has exactly max_seq_len tokens (fixed shapes, no padding)."""
    docs = generic_documents(seed=1, n_docs=n * 20)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, text = [], ""
    for doc in docs:
        text += doc + "\n"
        if len(text) >= min_chars:
            rows.append({"prompt": text[:200], "completion": " " + text[200:]})
            text = ""
            if len(rows) == n:
                break
    if len(rows) < n:
        raise ValueError(f"could build only {len(rows)} of {n} long examples")
    _write(out / "train.jsonl", rows)
    _write(out / "eval.jsonl", rows[:8])
    return out
