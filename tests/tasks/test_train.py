"""The training task when memory or disk runs out: one clear error naming what ran out."""

from pathlib import Path

import pytest

from models.config.run import config_from_dict
from models.training.resources import ResourceError
from tasks.train import train


def config(tiny_base, tiny_data, tmp_path):
    return config_from_dict(
        {
            "base_model": str(tiny_base),
            "data": {"path": str(tiny_data), "max_seq_len": 64},
            "adapter": {"r": 2, "target_modules": ["q_proj"]},
            "training": {"max_steps": 1, "batch_size": 4, "output_dir": str(tmp_path / "runs")},
        }
    )


def train_run1(config, tiny_base):
    """The train task as the finetune flow calls it (as run `run1`), no loss curve to MLflow."""
    return train.fn(
        config.train_spec(str(tiny_base)),
        run_id="run1",
        output_dir=config.adapter_dir("run1"),
        config_yaml=config.to_yaml(),
        log_to_run=False,
    )


def test_disk_full_while_saving_names_the_path(tiny_base, tiny_data, tmp_path, monkeypatch):
    """A file of the adapter lands on a device that is always full (/dev/full: the kernel's
    own ENOSPC on every write)."""
    monkeypatch.chdir(tmp_path)
    run_config = config(tiny_base, tiny_data, tmp_path)
    out = Path(run_config.adapter_dir("run1"))
    out.mkdir(parents=True)
    (out / "adapter_config.json").symlink_to("/dev/full")
    with pytest.raises(ResourceError) as err:
        train_run1(run_config, tiny_base)
    message = str(err.value)
    assert message.startswith(f"disk full writing {out} (")
    assert "free space there or point training.output_dir at another disk" in message
    assert "\n" not in message


def test_out_of_memory_while_training_names_device_and_knobs(
    tiny_base, tiny_data, tmp_path, monkeypatch
):
    """A training step asks the allocator for more memory than there is (torch's own error)."""
    from transformers import Trainer

    monkeypatch.chdir(tmp_path)

    def greedy_step(self, *a, **k):
        return torch_empty_too_big()

    monkeypatch.setattr(Trainer, "training_step", greedy_step)
    with pytest.raises(ResourceError) as err:
        train_run1(config(tiny_base, tiny_data, tmp_path), tiny_base)
    assert str(err.value) == (
        "out of memory on cpu while training (RuntimeError): lower training.batch_size (now 4) "
        "or data.max_seq_len (now 64); training.grad_accum_steps keeps the effective batch"
    )
    assert not (tmp_path / "runs" / "run1" / "adapter" / "adapter_model.safetensors").exists()


def torch_empty_too_big():
    import torch

    return torch.empty(2**50)
