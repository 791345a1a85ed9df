"""train_adapter end to end on a tiny model: figures, files, determinism, method hooks."""

import dataclasses
import json

import pytest

from models.config.specs import DataSpec, TrainSpec
from models.methods import AdapterSpec
from models.training.train import train_adapter

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=1)


def tiny_spec(tiny_base, tiny_data, method="lora", adapter=SPEC, steps=4, **fields) -> TrainSpec:
    """A short training of the tiny base on the tiny data; `fields` replace TrainSpec fields."""
    spec = TrainSpec(
        base_model=str(tiny_base),
        data=DataSpec(path=str(tiny_data), max_seq_len=64),  # the rest: config defaults
        method=method,
        adapter=adapter,
        max_steps=steps,
        learning_rate=3e-3,
        batch_size=8,
        logging_steps=2,
        device="cpu",
    )
    return dataclasses.replace(spec, **fields)


def train(tiny_base, tiny_data, out, method="lora", spec=SPEC, steps=4, on_log=None, **fields):
    return train_adapter(
        tiny_spec(tiny_base, tiny_data, method, spec, steps, **fields),
        output_dir=out,
        extra_files={"loraflow.yaml": "x: 1\n"},
        on_log=on_log,
    )


def test_training_saves_adapter_config_and_figures(tiny_base, tiny_data, tmp_path):
    logged = []
    result = train(tiny_base, tiny_data, tmp_path / "a", on_log=lambda m, s: logged.append(s))
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "loraflow.yaml",
        "tokenizer.json",
    } <= files
    assert result.steps == 4 and [s for s, _ in result.loss_history] == [2, 4]
    assert 2 in logged and 4 in logged
    assert result.tokens_per_second > 0 and result.adapter_bytes > 0
    assert result.trainable_params < result.total_params


def test_same_config_same_adapter_bytes(tiny_base, tiny_data, tmp_path):
    first = train(tiny_base, tiny_data, tmp_path / "a")
    second = train(tiny_base, tiny_data, tmp_path / "b")
    other_seed = train(
        tiny_base, tiny_data, tmp_path / "c", spec=AdapterSpec(**{**SPEC.__dict__, "seed": 2})
    )
    assert first.adapter_sha256 == second.adapter_sha256
    assert first.train_loss == second.train_loss
    assert other_seed.adapter_sha256 != first.adapter_sha256


def test_delta_lora_saves_folded_scaling(tiny_base, tiny_data, tmp_path):
    spec = AdapterSpec(**{**SPEC.__dict__, "delta_scale": 0.5})
    train(tiny_base, tiny_data, tmp_path / "d", method="delta_lora", spec=spec)
    saved = json.loads((tmp_path / "d" / "adapter_config.json").read_text())
    assert saved["lora_alpha"] == pytest.approx(8.0 + 0.5 * 4)


def test_deterministic_mode_is_on_while_training_only_and_changes_nothing_on_cpu(
    tiny_base, tiny_data, tmp_path
):
    import torch

    seen = []
    default = train(tiny_base, tiny_data, tmp_path / "a")
    strict = train(
        tiny_base,
        tiny_data,
        tmp_path / "b",
        on_log=lambda m, s: seen.append(torch.are_deterministic_algorithms_enabled()),
        deterministic=True,
    )
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()
    assert strict.adapter_sha256 == default.adapter_sha256
