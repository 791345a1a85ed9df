"""The training section refuses combinations of the speed options that cannot work, naming the
fields and the fix."""

from __future__ import annotations

import pytest

from models.config.run import ConfigError, LoraflowConfig, config_from_dict


def refused(training: dict) -> str:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"base_model": "b", "training": training}, source="run.yaml")
    return str(e.value)


def test_defaults():
    training = LoraflowConfig(base_model="b").training
    assert (training.chunked_loss, training.kernels) == ("auto", "none")
    assert training.batch_tokens is None and training.compile is False


@pytest.mark.parametrize(
    ("training", "message"),
    [
        (
            {"chunked_loss": "on", "num_processes": 2},
            "run.yaml: training.chunked_loss: on runs in one process (got num_processes=2); "
            "set training.chunked_loss: auto or off",
        ),
        (
            {"chunked_loss": "on", "kernels": "liger", "device": "cuda"},
            "run.yaml: training.chunked_loss: on and training.kernels: liger both replace the "
            "loss (Liger fuses linear + cross-entropy); set training.chunked_loss: auto or off",
        ),
        (
            {"compile": True, "device": "cpu"},
            "run.yaml: training.compile needs CUDA (got training.device: cpu); set "
            "training.compile: false",
        ),
        (
            {"kernels": "liger", "device": "cpu"},
            "run.yaml: training.kernels: liger needs CUDA (got training.device: cpu); set "
            "training.kernels: none",
        ),
    ],
)
def test_impossible_combinations_are_refused_in_one_line(training, message):
    assert refused(training) == message


def test_allowed_combinations():
    for training in (
        {"chunked_loss": "auto", "num_processes": 2},
        {"kernels": "liger", "device": "cuda", "compile": True},
        {"batch_tokens": 4096, "packing": True},
    ):
        config_from_dict({"base_model": "b", "training": training})
    assert "batch_tokens" in refused({"batch_tokens": 0})
