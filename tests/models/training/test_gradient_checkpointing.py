"""training.gradient_checkpointing: decoder layers run under activation checkpointing, and the
adapter trained is the same as without it (recomputation repeats the same ops, dropout included)."""

import pytest
import torch
import transformers.modeling_utils
from safetensors.torch import load_file

from models.config.run import TrainingConfig
from models.methods import AdapterSpec
from models.training.train import ADAPTER_WEIGHTS
from tests.models.training.test_train import train

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.1, target_modules=["q_proj", "v_proj"], seed=3)


@pytest.mark.parametrize("method", ["lora", "dora", "lora_fa"])
def test_same_adapter_with_and_without_checkpointing(
    method, tiny_base, tiny_data, tmp_path, monkeypatch
):
    calls = []
    real = transformers.modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)

    def run(on: bool):
        calls.clear()
        result = train(
            tiny_base,
            tiny_data,
            tmp_path / f"{method}-{on}",
            method=method,
            spec=SPEC,
            steps=3,
            gradient_checkpointing=on,
        )
        return result, len(calls)

    (off, off_calls), (on, on_calls) = run(False), run(True)
    assert off_calls == 0
    layers = 2  # the tiny base's decoder layers, each checkpointed once per step
    assert on_calls == 3 * layers
    for (_, a), (_, b) in zip(off.loss_history, on.loss_history, strict=True):
        assert b == pytest.approx(a, rel=1e-6)
    got_off = load_file(f"{off.adapter_dir}/{ADAPTER_WEIGHTS}")
    got_on = load_file(f"{on.adapter_dir}/{ADAPTER_WEIGHTS}")
    assert got_off.keys() == got_on.keys()
    for key in got_off:
        torch.testing.assert_close(got_on[key], got_off[key], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_defaults_off():
    assert TrainingConfig().gradient_checkpointing is False
    assert TrainingConfig(gradient_checkpointing=True).gradient_checkpointing is True
