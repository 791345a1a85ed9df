"""Every check that must pass before anything is trained, written or pushed."""

from __future__ import annotations

from models.data import SplitReport, validate_dataset
from models.loading import ModelError, check_target_modules, linear_layer_names, preflight_base
from models.methods import get_method


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_inputs(
    *,
    base_model: str,
    trust_remote_code: bool,
    target_modules: list[str] | str,
    data_dir: str,
    train_file: str,
    eval_file: str,
    prompt_field: str,
    completion_field: str,
    method: str | None = None,
) -> list[SplitReport]:
    """Data splits valid, base model present and safe to load, target modules present.

    Cheapest first: reading the JSONL takes milliseconds, building the model skeleton seconds.
    """
    if method is not None and get_method(method).needs_cuda and not cuda_available():
        raise ModelError(
            f"adapter.method {method} needs a CUDA GPU (4-bit bitsandbytes kernels) and none is "
            "available here; use lora or lora_fa on this machine"
        )
    reports = validate_dataset(data_dir, train_file, eval_file, prompt_field, completion_field)
    preflight_base(base_model, trust_remote_code)
    check_target_modules(target_modules, linear_layer_names(base_model, trust_remote_code))
    return reports
