"""Packed (padding-free) batches give each example exactly the logits and loss it gets alone."""

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.config.run import TrainingConfig
from models.data.packing import pack_batch
from models.data.splits import pad_batch
from models.methods import AdapterSpec
from models.training.train import train_adapter
from tests.models.training.test_train import tiny_spec

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=1)

# Lengths differ, and one example is a single token (its positions are just [0]).
FEATURES = [
    {"input_ids": [5, 9, 3, 7, 2], "labels": [-100, -100, 3, 7, 2]},
    {"input_ids": [4, 8], "labels": [-100, 8]},
    {"input_ids": [6], "labels": [-100]},
    {"input_ids": [11, 12, 13, 14, 15, 16, 17], "labels": [-100, -100, -100, 14, 15, 16, 17]},
]


def tiny_llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        use_cache=False,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


def test_pack_batch_layout_one_row_when_all_fit():
    batch = pack_batch(FEATURES[:3], row_len=64)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask
    assert batch["input_ids"].tolist() == [[5, 9, 3, 7, 2, 4, 8, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 0]]
    # Each example's first label is masked: the previous example's last token never learns it.
    assert batch["labels"].tolist() == [[-100, -100, 3, 7, 2, -100, 8, -100]]


# FEATURES in rows of <= 7 tokens, first-fit decreasing: [ex 3], [ex 0, ex 1], [ex 2, pad tail].
ROW_LEN = 7
PLACES = {3: (0, 0), 0: (1, 0), 1: (1, 5), 2: (2, 0)}  # example -> (row, offset)


def test_pack_batch_layout_rows():
    batch = pack_batch(FEATURES, row_len=ROW_LEN, pad_id=0)
    assert batch["input_ids"].tolist() == [
        [11, 12, 13, 14, 15, 16, 17],
        [5, 9, 3, 7, 2, 4, 8],
        [6, 0, 0, 0, 0, 0, 0],
    ]
    # The pad tail restarts its positions too: a sequence of its own that no real token sees.
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5, 6],
        [0, 1, 2, 3, 4, 0, 1],
        [0, 0, 1, 2, 3, 4, 5],
    ]
    assert batch["labels"].tolist() == [
        [-100, -100, -100, 14, 15, 16, 17],
        [-100, -100, 3, 7, 2, -100, 8],
        [-100] * 7,
    ]
    for i, (row, offset) in PLACES.items():
        n = len(FEATURES[i]["input_ids"])
        assert batch["input_ids"][row, offset : offset + n].tolist() == FEATURES[i]["input_ids"]


def test_example_longer_than_row_len_gets_its_own_row():
    batch = pack_batch(FEATURES, row_len=3)
    assert batch["input_ids"].shape == (3, 7)
    assert batch["input_ids"][2, :3].tolist() == [4, 8, 6]  # 2 + 1 tokens fill a row of 3


# The same with room for all in one row: longest first, then first fit.
ONE_ROW_PLACES = {3: (0, 0), 0: (0, 7), 1: (0, 12), 2: (0, 14)}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("row_len, places", [(ROW_LEN, PLACES), (64, ONE_ROW_PLACES)])
def test_packed_logits_equal_examples_run_one_by_one(attn, row_len, places):
    model = tiny_llama(attn)
    batch = pack_batch(FEATURES, row_len=row_len)
    assert batch["input_ids"].shape[0] == len({row for row, _ in places.values()})
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for i, (row, offset) in places.items():
            n = len(FEATURES[i]["input_ids"])
            alone = model(input_ids=torch.tensor([FEATURES[i]["input_ids"]])).logits[0]
            got = packed[row, offset : offset + n]
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


def test_without_position_ids_examples_would_see_each_other():
    """Control: the same row with plain positions is one causal sequence, so logits change."""
    model = tiny_llama("sdpa")
    batch = pack_batch(FEATURES[:2], row_len=64)
    with torch.no_grad():
        mixed = model(input_ids=batch["input_ids"]).logits[0, 5:7]
        alone = model(input_ids=torch.tensor([FEATURES[1]["input_ids"]])).logits[0]
    assert (mixed - alone).abs().max() > 1e-2


@pytest.mark.parametrize("row_len", [ROW_LEN, 64])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_padded(attn, row_len):
    model = tiny_llama(attn).train()

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    padded_loss, padded_grads = loss_and_grads(pad_batch(FEATURES, pad_id=0))
    packed_loss, packed_grads = loss_and_grads(pack_batch(FEATURES, row_len=row_len))
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-6, rtol=1e-6)
    for packed, padded in zip(packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(packed, padded, atol=1e-6, rtol=1e-5)


def test_packing_is_off_by_default_and_settable():
    assert TrainingConfig().packing is False
    assert TrainingConfig(packing=True).packing is True


def test_train_adapter_packed_matches_padded(tiny_base, tiny_data, tmp_path):
    """Same steps on the same batches: same losses; tokens/s counts real tokens only."""

    def run(packing, out):
        spec = tiny_spec(tiny_base, tiny_data, adapter=SPEC, steps=3, logging_steps=1)
        return train_adapter(dataclasses.replace(spec, packing=packing), output_dir=out)

    padded, packed = run(False, tmp_path / "padded"), run(True, tmp_path / "packed")
    assert [s for s, _ in packed.loss_history] == [1, 2, 3]
    for (_, a), (_, b) in zip(padded.loss_history, packed.loss_history, strict=True):
        assert b == pytest.approx(a, rel=1e-4)
    # Same examples seen, so the same token count: seconds differ, tokens do not.
    padded_tokens = padded.tokens_per_second * padded.train_seconds
    packed_tokens = packed.tokens_per_second * packed.train_seconds
    assert packed_tokens == pytest.approx(padded_tokens, rel=1e-9)
