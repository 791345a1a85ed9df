"""Eight real architectures, tiny and random, through plan, train, merge and export.

Each base is built from its transformers config class (tests/architectures.py) with the demo
tokenizer beside it; every stage loads it from disk, offline, as it would a hub checkpoint.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.base_model.loading import load_base
from models.export.merge import merge_adapter
from models.methods import AdapterSpec, get_method
from models.training.plan import plan_run
from models.training.train import count_params, train_adapter
from tests.architectures import NAMES
from tests.models.training.test_train import tiny_spec

ALL_LINEAR = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules="all-linear", seed=0)


def short_spec(base, tiny_data, adapter=ALL_LINEAR, method="lora", **fields):
    """Two steps of batch 2 on the demo data."""
    spec = tiny_spec(base, tiny_data, method=method, adapter=adapter, steps=2, batch_size=2)
    return dataclasses.replace(spec, learning_rate=5e-2, logging_steps=1, **fields)


@pytest.mark.parametrize("name", NAMES)
def test_plan_counts_equal_peft_on_the_instantiated_model(arch_bases, tiny_data, name):
    spec = short_spec(arch_bases[name], tiny_data)
    plan = plan_run(spec)
    model, _ = load_base(str(arch_bases[name]))
    trainable, total = count_params(get_method("lora").build(model, ALL_LINEAR))
    assert (plan.trainable_params, plan.total_params) == (trainable, total)
    assert trainable > 0 and plan.est_peak_memory_bytes > 0


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("name", NAMES)
def test_train_merge_and_export_load_in_plain_transformers(arch_bases, tiny_data, tmp_path, name):
    """Training moves the model; the merged export, loaded by transformers alone, gives the
    adapted model's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = str(arch_bases[name])
    result = train_adapter(short_spec(base_dir, tiny_data), output_dir=tmp_path / "adapter")
    assert result.steps == 2 and all(loss == loss for _, loss in result.loss_history)
    export = tmp_path / "export"
    files = merge_adapter(base_model=base_dir, adapter_dir=result.adapter_dir, out_dir=export)
    assert any(f.suffix == ".safetensors" for f in files)

    ids = torch.tensor([[3, 17, 42, 99, 5, 8]])
    base, _ = load_base(base_dir)
    before = logits(base, ids)
    adapted = logits(PeftModel.from_pretrained(base, result.adapter_dir).eval(), ids)
    assert (adapted - before).abs().max() > 1e-3  # the adapter changed the model
    exported = AutoModelForCausalLM.from_pretrained(str(export)).eval()
    assert type(exported).__name__ == type(base).__name__
    torch.testing.assert_close(logits(exported, ids), adapted, atol=1e-4, rtol=1e-4)


# Absolute learned positions and fused qkv with rotary: the two shapes furthest from Llama's
# (tests/models/data/test_packing.py trains the Llama-shaped demo base packed).
@pytest.mark.parametrize("name", ["gpt2", "phi3"])
def test_packed_training_equals_padded(arch_bases, tiny_data, tmp_path, name):
    """Where the check lets packing through, a packed step has the padded step's loss."""

    def losses(packing):
        spec = short_spec(arch_bases[name], tiny_data, packing=packing)
        out = tmp_path / str(packing)
        return [loss for _, loss in train_adapter(spec, output_dir=out).loss_history]

    assert losses(True) == pytest.approx(losses(False), rel=1e-4)
