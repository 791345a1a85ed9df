"""Training and evaluation with the chunked loss give the plain path's figures and adapter:
through the Trainer, PEFT (an adapted output head too), packing, assistant-only labels and
gradient accumulation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from models.base_model import chunked_loss
from models.base_model.loading import load_base
from models.config.specs import DataSpec
from models.data.splits import read_split, tokenize
from models.evaluation.evaluate import completion_loss
from models.methods import AdapterSpec
from tests.models.training.test_train import train

REL = 1e-5
HEADED = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "lm_head"], seed=1)


def adapter_weights(result) -> dict[str, torch.Tensor]:
    return load_file(f"{result.adapter_dir}/adapter_model.safetensors")


@pytest.mark.parametrize(
    ("base", "packing"), [("llama", False), ("qwen2", True)], ids=["llama-padded", "qwen2-packed"]
)
def test_training_with_the_chunked_loss_equals_the_plain_trainer(
    arch_bases, tiny_data, tmp_path, monkeypatch, base, packing
):
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 64 * 4 * 800)  # several chunks per batch
    base_dir = arch_bases[base]
    common = dict(spec=HEADED, steps=3, grad_accum_steps=2, packing=packing, logging_steps=1)
    plain = train(base_dir, tiny_data, tmp_path / "plain", chunked_loss="off", **common)
    chunked = train(base_dir, tiny_data, tmp_path / "chunked", chunked_loss="on", **common)
    assert (plain.chunked_loss, chunked.chunked_loss) == (False, True)
    assert len(plain.loss_history) == len(chunked.loss_history) == 3
    for (step, want), (again, got) in zip(plain.loss_history, chunked.loss_history, strict=True):
        assert step == again and abs(got - want) <= REL * abs(want)
    expected, weights = adapter_weights(plain), adapter_weights(chunked)
    assert expected.keys() == weights.keys()
    assert any("lm_head" in name for name in weights)  # the head's adapter trained chunk-wise
    for name, tensor in expected.items():
        assert (weights[name] - tensor).abs().max() <= 1e-4 * tensor.abs().max(), name


def test_auto_trains_chunked_where_exact_and_plain_where_the_base_softcaps(
    arch_bases, tiny_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 64 * 4 * 800)  # batches > one chunk
    adapter = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj"], seed=1)
    llama = train(arch_bases["llama"], tiny_data, tmp_path / "l", spec=adapter, steps=1)
    gemma2 = train(arch_bases["gemma2"], tiny_data, tmp_path / "g", spec=adapter, steps=1)
    assert llama.chunked_loss is True and gemma2.chunked_loss is False
    monkeypatch.undo()  # 256 MiB chunks: the tiny vocabulary's batch fits in one
    assert (
        train(arch_bases["llama"], tiny_data, tmp_path / "s", spec=adapter, steps=1).chunked_loss
        is False
    )


def test_evaluation_loss_chunked_equals_plain(tiny_base, tiny_data, monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 16 * 4 * 800)
    model, tokenizer = load_base(str(tiny_base))
    model.eval()
    data = DataSpec(path=str(tiny_data), max_seq_len=64)
    examples = read_split(data.eval_path, data)
    features = tokenize(examples, tokenizer, 64, "truncate").features
    plain = completion_loss(model, tokenizer, features, 8)
    chunked = completion_loss(model, tokenizer, features, 8, chunked=True)
    assert plain > 0 and abs(chunked - plain) <= REL * plain
