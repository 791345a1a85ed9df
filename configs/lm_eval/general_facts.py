"""The data of the general_facts lm-eval task: general_facts.jsonl beside this file, so the task
reads the same local file from any working directory (lm-eval's `custom_dataset`)."""

import json
from pathlib import Path

import datasets

DATA = Path(__file__).with_name("general_facts.jsonl")


def load(**_metadata) -> dict[str, datasets.Dataset]:
    """The test split: {"question", "choices", "answer" (index of the right choice)} rows."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    return {"test": datasets.Dataset.from_list(rows)}
