"""Checks that run before anything is trained, written or pushed."""

from __future__ import annotations

from prefect import task

from models.data import SplitReport, validate_dataset
from models.loading import check_target_modules, linear_layer_names, preflight_base


@task(name="check-inputs")
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
) -> list[SplitReport]:
    """Base model loadable and safe, target modules present, both data splits valid."""
    preflight_base(base_model, trust_remote_code)
    check_target_modules(target_modules, linear_layer_names(base_model, trust_remote_code))
    return validate_dataset(data_dir, train_file, eval_file, prompt_field, completion_field)
