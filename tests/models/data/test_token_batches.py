"""Batches cut to a token budget: within it, every example exactly once, seeded."""

from __future__ import annotations

import random

import pytest

from models.data.packing import pack_batch
from models.data.splits import pad_batch
from models.data.token_batches import batch_shape, token_batches

_RNG = random.Random(3)
LENGTHS = [_RNG.randint(5, 90) for _ in range(300)]


def features(lengths: list[int]) -> list[dict]:
    return [{"input_ids": [7] * n, "labels": [7] * n} for n in lengths]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("budget", [128, 512, 2048])
def test_batches_respect_the_budget_and_see_every_example_once(packing, budget):
    batches = token_batches(LENGTHS, budget, packing=packing, row_len=128, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    for batch in batches:
        # The shape counted is the tensor the collator then builds.
        feats = features([LENGTHS[i] for i in batch])
        built = pack_batch(feats, row_len=128) if packing else pad_batch(feats, pad_id=0)
        rows, width = built["input_ids"].shape
        assert (rows, width) == batch_shape(
            [LENGTHS[i] for i in batch], packing=packing, row_len=128
        )
        assert rows * width <= budget or len(batch) == 1
    # Greedy: a batch ends only when the next example would have broken the budget.
    order = [i for b in batches for i in b]
    for batch, after in zip(batches, batches[1:], strict=False):
        grown = [LENGTHS[i] for i in [*batch, after[0]]]
        rows, width = batch_shape(grown, packing=packing, row_len=128)
        assert rows * width > budget
    assert order != list(range(len(LENGTHS)))  # shuffled


def test_packing_fits_more_examples_in_a_budget_than_padding():
    padded = token_batches(LENGTHS, 1024, packing=False, row_len=128, seed=0)
    packed = token_batches(LENGTHS, 1024, packing=True, row_len=128, seed=0)
    assert len(packed) < len(padded)


def test_an_example_over_the_budget_gets_a_batch_of_its_own_and_the_cut_is_seeded():
    batches = token_batches([10, 300, 10, 10], 64, packing=False, row_len=512, seed=1)
    assert [1] in batches
    assert batches == token_batches([10, 300, 10, 10], 64, packing=False, row_len=512, seed=1)
    assert token_batches(LENGTHS, 512, packing=False, row_len=128, seed=1) != token_batches(
        LENGTHS, 512, packing=False, row_len=128, seed=2
    )
