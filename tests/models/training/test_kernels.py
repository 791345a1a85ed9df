"""training.kernels and training.compile are refused in one line where they cannot run."""

from __future__ import annotations

import importlib.util

import pytest

from models import checks
from models.base_model.loading import ModelError
from models.training.kernels import check_kernels, liger_model_types
from tests.models.base_model.test_probes import check_spec

LIGER = importlib.util.find_spec("liger_kernel") is not None


def one_line(refused) -> str:
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.mark.skipif(LIGER, reason="liger-kernel is installed here")
def test_liger_is_refused_where_liger_kernel_is_not_installed():
    assert liger_model_types() is None
    with pytest.raises(ModelError) as refused:
        check_kernels("liger", "llama", "some/base", cuda=True)
    assert one_line(refused) == (
        "training.kernels: liger needs the liger-kernel package, which is not installed here "
        "(pip install 'loraflow[gpu]'); set training.kernels: none"
    )


def test_no_kernels_is_never_refused():
    check_kernels("none", "an-architecture-nobody-supports", "some/base", cuda=False)


@pytest.mark.skipif(not LIGER, reason="needs liger-kernel (the gpu extra)")
def test_liger_refuses_a_model_type_it_has_no_kernels_for():
    supported = liger_model_types()
    assert "llama" in supported and "gpt_neox" not in supported
    check_kernels("liger", "llama", "b", cuda=True)
    with pytest.raises(ModelError) as refused:
        check_kernels("liger", "gpt_neox", "the/base", cuda=True)
    assert one_line(refused).startswith(
        "training.kernels: liger has no kernels for base_model the/base (model type 'gpt_neox'; "
        "Liger supports "
    )
    with pytest.raises(ModelError, match="none is available here"):
        check_kernels("liger", "llama", "b", cuda=False)


def test_the_check_stage_refuses_liger_and_compile_without_cuda(arch_bases, tiny_data, monkeypatch):
    monkeypatch.setattr(checks, "cuda_available", lambda: False)
    llama = arch_bases["llama"]
    with pytest.raises(ModelError) as refused:
        checks.check_inputs(check_spec(llama, tiny_data, kernels="liger"))
    assert one_line(refused).startswith("training.kernels: liger ")
    with pytest.raises(ModelError) as refused:
        checks.check_inputs(check_spec(llama, tiny_data, compile=True))
    assert one_line(refused) == (
        "training.compile compiles for a CUDA GPU and none is available here; set "
        "training.compile: false"
    )
    assert checks.check_inputs(check_spec(llama, tiny_data, chunked_loss="on"))
    with pytest.raises(ModelError, match="^training.chunked_loss: on is not exact"):
        checks.check_inputs(check_spec(arch_bases["gemma2"], tiny_data, chunked_loss="on"))
