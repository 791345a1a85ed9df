"""models.registry.reproduction: metric tolerances, tensor differences and the three verdicts."""

import math

import pytest
import torch
from safetensors.torch import save_file

from models.registry.reproduction import (
    DIFFERENT,
    EQUIVALENT,
    IDENTICAL,
    METRIC_TOLERANCES,
    changed_tags,
    check_metrics,
    max_abs_difference,
    verdict,
)

RECORDED = {"eval_loss": 0.2520, "perplexity": 1.287, "exact_match": 0.875, "examples": 200.0}


def test_metrics_within_and_outside_their_tolerances():
    close = {"eval_loss": 0.2530, "perplexity": 1.2883, "exact_match": 0.860, "examples": 200.0}
    checks = check_metrics(RECORDED, close)
    assert [c.name for c in checks] == ["eval_loss", "perplexity", "exact_match"]  # not examples
    assert all(c.within for c in checks), [c.describe() for c in checks]
    assert verdict(False, checks) == EQUIVALENT
    assert checks[0].describe() == "eval_loss: recorded 0.2520, rebuilt 0.2530 (0.40% <= 1%)"

    far = {**close, "exact_match": 0.63}
    checks = check_metrics(RECORDED, far)
    assert [c.name for c in checks if not c.within] == ["exact_match"]
    assert checks[2].describe() == "exact_match: recorded 0.8750, rebuilt 0.6300 (0.2450 > 0.025)"
    assert verdict(False, checks) == DIFFERENT


def test_relative_bound_is_relative_and_exact_match_bound_is_five_of_200():
    kind, bound = METRIC_TOLERANCES["eval_loss"]
    assert kind == "relative"
    (loss,) = check_metrics({"eval_loss": 6.0}, {"eval_loss": 6.0 * (1 + bound * 0.9)})
    assert loss.within
    (loss,) = check_metrics({"eval_loss": 6.0}, {"eval_loss": 6.0 * (1 + bound * 1.1)})
    assert not loss.within
    (em,) = check_metrics({"exact_match": 0.8}, {"exact_match": 0.8 + 5 / 200})
    assert em.within
    (em,) = check_metrics({"exact_match": 0.8}, {"exact_match": 0.8 + 6 / 200})
    assert not em.within
    (zero,) = check_metrics({"eval_loss": 0.0}, {"eval_loss": 1e-9})
    assert zero.difference == math.inf and not zero.within


def test_identical_bytes_win_and_no_metrics_is_not_equivalent():
    assert verdict(True, []) == IDENTICAL
    assert verdict(False, []) == DIFFERENT


def test_max_abs_difference_of_two_adapters(tmp_path):
    a = {"lora_A": torch.zeros(4, 8), "lora_B": torch.ones(8, 4)}
    b = {"lora_A": torch.zeros(4, 8), "lora_B": torch.ones(8, 4)}
    b["lora_B"][3, 1] += 2.5e-7
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    diff = max_abs_difference(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert diff == pytest.approx(2.5e-7, rel=0.1)  # fp32 spacing near 1 is 1.19e-7
    assert max_abs_difference(tmp_path / "a.safetensors", tmp_path / "a.safetensors") == 0.0
    save_file({"lora_A": torch.zeros(4, 8)}, tmp_path / "c.safetensors")
    assert max_abs_difference(tmp_path / "a.safetensors", tmp_path / "c.safetensors") == math.inf


def test_changed_tags_name_each_difference_with_both_values():
    recorded = {"env.cpu": "AMD EPYC", "env.threads": "2", "env.gpu": "none", "seed": "0"}
    here = {"env.cpu": "Intel(R) Xeon(R)", "env.threads": "2", "env.var.MKL_CBWR": "COMPATIBLE"}
    assert changed_tags(recorded, here, "env.") == [
        "cpu: recorded AMD EPYC, here Intel(R) Xeon(R)",
        "gpu: recorded none, here not set",
        "var.MKL_CBWR: recorded not recorded, here COMPATIBLE",
    ]
    assert changed_tags(recorded, recorded, "env.") == []
