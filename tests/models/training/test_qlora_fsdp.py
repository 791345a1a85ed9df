"""FSDP-QLoRA on CUDA: the 4-bit base stored in bfloat16 (bnb_4bit_quant_storage) and sharded
by the Trainer (accelerate's FSDP2). Needs CUDA and bitsandbytes, so skipped on CPU machines:
written on machines without a GPU and never run there."""

import dataclasses
import importlib.util

import pytest
import torch

from models.training.distributed import train_adapter_distributed
from models.training.train import train_adapter
from tests.models.training.test_sharding import spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(
        importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
    ),
]


def qlora(tiny_base, tiny_data, **fields):
    return dataclasses.replace(
        spec(tiny_base, tiny_data, "qlora", **fields), device="cuda", save_steps=0
    )


def test_the_4bit_base_for_fsdp_loads_in_one_float_dtype(tiny_base):
    """What lets FSDP shard it: every weight, the packed 4-bit ones included, is bfloat16."""
    import bitsandbytes as bnb

    from models.base_model.loading import load_base
    from models.methods.qlora import load_kwargs

    model, _ = load_base(
        str(tiny_base), dtype=torch.bfloat16, device="cuda", **load_kwargs(sharded=True)
    )
    assert any(isinstance(p, bnb.nn.Params4bit) for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (one per rank)")
def test_fsdp_qlora_on_two_gpus_trains_as_one(tiny_base, tiny_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    one = train_adapter(qlora(tiny_base, tiny_data, batch_size=16), output_dir=tmp_path / "one")
    two = train_adapter_distributed(
        qlora(tiny_base, tiny_data, batch_size=8, num_processes=2, sharding="fsdp"),
        output_dir=tmp_path / "two",
    )
    assert two.steps == one.steps and two.train_loss < two.loss_history[0][1]
    # bf16 storage and norms (not fp32 as unsharded QLoRA keeps them): close, not equal.
    for (step_a, a), (step_b, b) in zip(one.loss_history, two.loss_history, strict=True):
        assert step_a == step_b and abs(a - b) <= 5e-2 * abs(a)
    assert two.param_bytes_per_rank < one.param_bytes_per_rank
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    PeftModel.from_pretrained(base, tmp_path / "two")  # a standard PEFT adapter
