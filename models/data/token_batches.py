"""Batches sized by a token budget (`training.batch_tokens`) instead of a row count.

A fixed batch_size pads (or packs) short and long examples alike: a batch of short examples
leaves the device idle, a batch of long ones may not fit. Here each batch takes as many examples
as keep its tensor, rows x row length, within the budget: padded, rows = examples and the row
length is the longest example's; packed (models.data.packing), the rows and width that
pack_batch will build from them. An example longer than the budget gets a batch of its own.

The batches are drawn once, from the examples in a seeded random order, and handed to the
Trainer as one dataset item each; the Trainer then shuffles the batches every epoch with its
data seed. Every example is in exactly one batch.
"""

from __future__ import annotations

import random

from models.data.packing import first_fit_decreasing


def batch_shape(lengths: list[int], *, packing: bool, row_len: int) -> tuple[int, int]:
    """(rows, row length) of the tensor a batch of examples of these lengths becomes."""
    if not packing:
        return len(lengths), max(lengths)
    rows = first_fit_decreasing(lengths, row_len)
    return len(rows), max(sum(lengths[i] for i in row) for row in rows)


def token_batches(
    lengths: list[int], budget: int, *, packing: bool, row_len: int, seed: int
) -> list[list[int]]:
    """Example indices per batch: a seeded shuffle of all examples, cut greedily so that every
    batch of two or more examples has rows x row length <= budget."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        candidate = [*current, i]
        rows, width = batch_shape([lengths[j] for j in candidate], packing=packing, row_len=row_len)
        if current and rows * width > budget:
            batches.append(current)
            current = [i]
        else:
            current = candidate
    if current:
        batches.append(current)
    return batches
