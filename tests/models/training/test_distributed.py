"""Data-parallel training (DDP) with 2 CPU processes on gloo, against one process."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from models.hashing import file_sha256
from models.methods import AdapterSpec
from models.training.distributed import DistributedTrainingError, train_adapter_distributed
from models.training.train import train_adapter
from tests.models.training.test_train import tiny_spec

pytestmark = pytest.mark.slow

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=0)


def spec(tiny_base, tiny_data, method="lora", **fields):
    spec = tiny_spec(tiny_base, tiny_data, method, SPEC, steps=12, logging_steps=3, **fields)
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, too_long="truncate"))


# lora_fa: its frozen-A autograd function under DDP's gradient all-reduce.
@pytest.mark.parametrize("method", ["lora", "lora_fa"])
def test_two_processes_match_one_with_the_same_global_batch(method, tiny_base, tiny_data, tmp_path):
    single = train_adapter(
        spec(tiny_base, tiny_data, method, batch_size=16), output_dir=tmp_path / "one"
    )
    logs = []
    ddp = train_adapter_distributed(
        # batch_size per process: the global batch is 2 x 8 = 16, as above
        spec(tiny_base, tiny_data, method, batch_size=8, num_processes=2),
        output_dir=tmp_path / "two",
        on_log=lambda record, step: logs.append((step, record)),
    )
    assert ddp.steps == single.steps == 12
    # Same model, seed, schedule and global batches (the Trainer splits each global batch across
    # the processes); gradients are averaged over gloo, so only float summation order differs.
    assert abs(ddp.train_loss - single.train_loss) < 1e-4 * single.train_loss
    for (s1, l1), (s2, l2) in zip(single.loss_history, ddp.loss_history, strict=True):
        assert s1 == s2 and abs(l1 - l2) < 1e-4 * l1
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    if method == "lora_fa":  # A stays at its (seeded, identical) init in both, bit for bit
        assert all(torch.equal(one[k], two[k]) for k in one if ".lora_A." in k)
    assert ddp.train_loss < ddp.loss_history[0][1]  # it learned
    # Only rank 0 relays logs (once per logging step, not once per process) and saves.
    loss_steps = [step for step, record in logs if "loss" in record]
    assert loss_steps == [3, 6, 9, 12]
    assert ddp.adapter_sha256 == file_sha256(tmp_path / "two" / "adapter_model.safetensors")
    assert ddp.tokens_per_second > 0 and ddp.trainable_params == single.trainable_params


def test_a_failing_process_is_one_clear_error(tiny_base, tiny_data, tmp_path):
    good = spec(tiny_base, tiny_data, batch_size=4, num_processes=2)
    bad = dataclasses.replace(good, data=dataclasses.replace(good.data, path=str(tmp_path)))
    with pytest.raises(DistributedTrainingError, match="training with 2 processes failed"):
        train_adapter_distributed(bad, output_dir=tmp_path / "bad")
