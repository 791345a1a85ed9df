"""Padding-free batches: a batch's examples concatenated into one row (`training.packing`).

A padded batch spends compute on pad tokens: every row is as long as the longest example. A
packed batch is one row holding all examples back to back, with `position_ids` restarting at 0
for every example and no `attention_mask`. From such position ids transformers (masking_utils:
`find_packed_sequence_indices`) builds a block-diagonal causal mask for sdpa and eager attention,
so a token attends only to earlier tokens of its own example, and rotary positions are the same
as the example would get alone. The per-token logits are then those of the examples run one by
one (tests/models/test_packing.py checks this).

Loss: causal LM loss shifts labels by one, so the last token of an example would be trained to
predict the first token of the next one. The first label of every example is therefore -100
(it is a prompt token in loraflow data anyway, so the loss is the padded batch's loss).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def pack_batch(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """One row: input_ids, labels (-100 at every example's start) and restarting position_ids."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for f in features:
        n = len(f["input_ids"])
        ids.extend(f["input_ids"])
        labels.append(IGNORE_INDEX)
        labels.extend(f["labels"][1:n])
        positions.extend(range(n))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
    }
