"""What the Trainer iterates over: the tokenized examples, one per item (batch_size of them per
batch), or with training.batch_tokens whole batches cut to a token budget (one per item,
models.data.token_batches); and the collator that pads or packs them."""

from __future__ import annotations

import torch

from models.data.packing import pack_batch
from models.data.splits import pad_batch
from models.data.token_batches import token_batches


def train_items(
    features: list[dict],
    *,
    batch_tokens: int | None,
    packing: bool,
    row_len: int,
    seed: int,
) -> list:
    """The Trainer's dataset: the examples, or (batch_tokens) lists of examples, one batch each."""
    if batch_tokens is None:
        return features
    lengths = [len(f["input_ids"]) for f in features]
    batches = token_batches(lengths, batch_tokens, packing=packing, row_len=row_len, seed=seed)
    return [[features[i] for i in batch] for batch in batches]


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
