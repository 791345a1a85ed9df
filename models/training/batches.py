"""What the Trainer iterates over: the tokenized examples, one per item (batch_size of them per
batch), or with training.batch_tokens whole batches cut to a token budget (one per item,
models.data.token_batches); and the collator that pads or packs them."""

from __future__ import annotations

import torch

from models.data.packing import pack_batch
from models.data.splits import pad_batch
from models.data.token_batches import token_batches


class Examples(torch.utils.data.Dataset):
    """The examples of a prepared split (models.data.prepared), read from its mapped files one
    at a time: memory does not grow with the split."""

    def __init__(self, split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.split.feature(int(i))


class Batches(torch.utils.data.Dataset):
    """Pre-cut batches of a split's examples, one per item (training.batch_tokens)."""

    def __init__(self, split, batches: list[list[int]]) -> None:
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[dict[str, list[int]]]:
        return [self.split.feature(j) for j in self.batches[i]]


def train_items(
    split,
    *,
    batch_tokens: int | None,
    packing: bool,
    row_len: int,
    seed: int,
) -> torch.utils.data.Dataset:
    """The Trainer's dataset over a prepared split: the examples, or (batch_tokens) lists of
    examples, one batch each, planned from the examples' lengths alone."""
    if batch_tokens is None:
        return Examples(split)
    lengths = split.lengths().tolist()
    batches = token_batches(lengths, batch_tokens, packing=packing, row_len=row_len, seed=seed)
    return Batches(split, batches)


class Collator:
    """Pads (or packs) a batch and counts the real tokens it holds: tokens/s excludes padding.
    A batch of pre-cut batches (training.batch_tokens, one per Trainer batch) is flattened."""

    def __init__(self, *, packing: bool, row_len: int, tokenizer) -> None:
        self.packing, self.row_len, self.tokenizer = packing, row_len, tokenizer
        self.seen = 0

    def __call__(self, items: list) -> dict[str, torch.Tensor]:
        features = [f for item in items for f in (item if isinstance(item, list) else [item])]
        self.seen += sum(len(f["input_ids"]) for f in features)
        if self.packing:
            return pack_batch(features, row_len=self.row_len, pad_id=self.tokenizer.pad_token_id)
        return pad_batch(features, self.tokenizer.pad_token_id)
