"""The real-model example's task (`configs/smollm2_lora.yaml`): trip notes to ticket lines.

A user turn is a travel note in one of several word orders ("On Friday, Mia goes to Lisbon,
leaving from Oslo."); the answer is the house format `Mia: Oslo -> Lisbon, Friday`, checked by
exact match. SmolLM2-135M-Instruct reads such notes well enough but answers in its own words
(0 exact), while the parts of the answer are all in the note: a LoRA adapter only has to learn
which part goes where, which it does in minutes on a CPU.

Each (name, from, to, day) trip is used at most once over both splits, so eval never repeats a
train trip; the files are the same bytes on every machine (the data's DVC md5 is pinned by a
test, data-smollm2.dvc).
"""

from __future__ import annotations

import random
from pathlib import Path

from demo.task import write_splits

NAMES = (
    "Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas",
    "Lena", "Marco", "Nora", "Oscar", "Paula", "Ravi", "Sofia", "Tom", "Uma", "Victor",
)  # fmt: skip
CITIES = (
    "Oslo", "Rome", "Lisbon", "Berlin", "Madrid", "Vienna", "Prague", "Dublin", "Paris",
    "Athens", "Warsaw", "Zurich", "Porto", "Munich", "Milan", "Krakow", "Seville", "Bergen",
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NOTES = (
    "{name} travels from {src} to {dst} on {day}.",
    "On {day}, {name} goes to {dst}, leaving from {src}.",
    "{name} leaves {src} on {day} and arrives in {dst}.",
    "Trip for {name}: {day}, {src} to {dst}.",
    "To {dst} from {src}, {name} goes on {day}.",
    "{day}: {name} takes the train from {src}, going to {dst}.",
)
INSTRUCTION = "Write the ticket line for this note."


def ticket(name: str, src: str, dst: str, day: str) -> str:
    """The answer's house format."""
    return f"{name}: {src} -> {dst}, {day}"


def _example(rng: random.Random, seen: set[tuple[str, ...]]) -> dict:
    trip = (rng.choice(NAMES), *rng.sample(CITIES, 2), rng.choice(DAYS))
    while trip in seen:
        trip = (rng.choice(NAMES), *rng.sample(CITIES, 2), rng.choice(DAYS))
    seen.add(trip)
    name, src, dst, day = trip
    note = rng.choice(NOTES).format(name=name, src=src, dst=dst, day=day)
    return {
        "messages": [
            {"role": "user", "content": f"{INSTRUCTION}\n{note}"},
            {"role": "assistant", "content": ticket(name, src, dst, day)},
        ]
    }


def build_smollm2_task_data(
    out_dir: str | Path, *, seed: int = 0, n_train: int = 1000, n_eval: int = 100
) -> dict:
    """Write `train.jsonl` and `eval.jsonl` (chat format) into `out_dir`; eval is drawn first,
    so it stays the same when only n_train changes. Returns the examples per split."""
    return write_splits(out_dir, _example, seed=seed, n_train=n_train, n_eval=n_eval)
