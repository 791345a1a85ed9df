"""training.cpu_threads: validated in the config, applied only inside the training block."""

import pytest
import torch

from models.base_model.loading import cpu_threads
from models.config.run import ConfigError, config_from_dict


def test_cpu_threads_sets_then_restores():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before


def test_cpu_threads_must_be_positive():
    with pytest.raises(ConfigError, match=r"training.cpu_threads: must be >= 1"):
        config_from_dict({"base_model": "b", "training": {"cpu_threads": 0}})
