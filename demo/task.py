"""The demo task: its vocabulary, its rules (first / last word, reverse, repeat) and its data."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

# --- vocabulary -----------------------------------------------------------------------------------
# Plain lowercase words, each frequent in the generic text, so the tokenizer learns every one as a
# single token (with its leading space) and task answers stay a few tokens long.

NOUNS = (
    "cat", "dog", "sun", "moon", "star", "tree", "river", "house", "apple", "bird",
    "fish", "boat", "car", "road", "hill", "lake", "book", "door", "cup", "hat",
    "king", "queen", "child", "horse", "cow", "rain", "snow", "wind", "fire", "stone",
    "bread", "milk", "ship", "city", "field", "garden", "window", "table", "chair", "lamp",
    "box", "key", "ring", "bell", "song", "game", "ball", "shoe", "coat", "bag",
    "egg", "cake", "leaf", "rose", "farm", "bridge", "tower", "train", "clock", "map",
)  # fmt: skip
ADJECTIVES = (
    "red", "blue", "green", "big", "small", "old", "new", "quick", "slow", "happy",
    "sad", "warm", "cold", "dark", "bright", "soft", "hard", "tall", "short", "long",
    "young", "quiet", "loud", "clean", "wild", "sweet", "gold", "white", "black", "brown",
)  # fmt: skip
VERBS = (
    "sees", "likes", "finds", "takes", "makes", "wants", "holds", "helps", "calls", "meets",
    "moves", "opens", "paints", "keeps", "brings", "follows",
)  # fmt: skip
NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Ivy", "Jack")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# The words task inputs (and the copied lists of the generic text) are drawn from.
TASK_WORDS = NOUNS + ADJECTIVES

# --- the demo task --------------------------------------------------------------------------------


def _first(words: Sequence[str]) -> list[str]:
    return [words[0]]


def _last(words: Sequence[str]) -> list[str]:
    return [words[-1]]


def _reverse(words: Sequence[str]) -> list[str]:
    return list(reversed(words))


def _repeat(words: Sequence[str]) -> list[str]:
    return list(words)


# Rule name -> (instruction shown in the prompt, function from input words to answer words).
RULES: dict[str, tuple[str, Callable[[Sequence[str]], list[str]]]] = {
    "first": ("First word of", _first),
    "last": ("Last word of", _last),
    "reverse": ("Reverse the words", _reverse),
    "repeat": ("Repeat the words", _repeat),
}
MIN_WORDS, MAX_WORDS = 3, 5  # input words per example
ECHO_MIN_WORDS, ECHO_MAX_WORDS = 3, 5  # words per repeated list in the generic text


def format_prompt(instruction: str, words: Sequence[str]) -> str:
    """The prompt of one example, e.g. "Reverse the words: cat red sun\\nAnswer:"."""
    return f"{instruction}: {' '.join(words)}\nAnswer:"


def format_completion(answer: Sequence[str]) -> str:
    """The target continuation, e.g. " sun red cat": one space before every word."""
    return "".join(f" {w}" for w in answer)


def _sample_example(rng: random.Random, rules: Sequence[str]) -> tuple[tuple[str, ...], dict]:
    """One random example and its input word sequence."""
    rule = rules[rng.randrange(len(rules))]
    words = tuple(rng.sample(TASK_WORDS, rng.randint(MIN_WORDS, MAX_WORDS)))  # distinct words
    instruction, answer = RULES[rule]
    prompt, completion = format_prompt(instruction, words), format_completion(answer(words))
    return words, {"prompt": prompt, "completion": completion}


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """One sorted-key JSON object per line with "\\n" endings: byte-identical on every run."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def write_splits(
    out_dir: str | Path,
    draw: Callable[[random.Random, set[tuple[str, ...]]], dict],
    *,
    seed: int,
    n_train: int,
    n_eval: int,
) -> dict:
    """`train.jsonl` and `eval.jsonl` in `out_dir`, one `draw(rng, seen)` a line (`seen` keeps
    examples unique across both splits). Eval is drawn first, so it stays the same when only
    n_train changes. Returns the examples per split."""
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()  # membership only: set order never reaches the output
    splits = {split: [draw(rng, seen) for _ in range(n)] for split, n in
              (("eval", n_eval), ("train", n_train))}  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval"):
        _write_jsonl(out / f"{split}.jsonl", splits[split])
    return {"train": n_train, "eval": n_eval}


def build_demo_data(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 20000,
    n_eval: int = 200,
    rules: Sequence[str] = tuple(RULES),
) -> dict:
    """Write `train.jsonl` and `eval.jsonl` of the demo task into `out_dir`.

    Every line is `{"completion": ..., "prompt": ...}`. Rules are mixed uniformly. A word sequence
    is used at most once over both splits (whatever the rule), so eval never repeats train.
    Returns the number of examples per split.
    """
    unknown = [r for r in rules if r not in RULES]
    if unknown or not rules:
        raise ValueError(f"unknown rules {unknown}; choose from {sorted(RULES)}")
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()  # membership only: set order never reaches the output
    splits: dict[str, list[dict]] = {}
    # Eval is drawn first, so it stays the same when only n_train changes.
    for split, n in (("eval", n_eval), ("train", n_train)):
        rows = splits[split] = []
        while len(rows) < n:
            words, example = _sample_example(rng, list(rules))
            if words not in seen:
                seen.add(words)
                rows.append(example)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "train.jsonl", splits["train"])
    _write_jsonl(out / "eval.jsonl", splits["eval"])
    return {"train": n_train, "eval": n_eval}
