"""Every check that must pass before anything is trained, written or pushed."""

from __future__ import annotations

from models.data import SplitReport, read_split, tokenize, validate_dataset
from models.loading import (
    ModelError,
    check_target_modules,
    layer_kinds,
    linear_names,
    load_tokenizer,
    preflight_base,
)
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
    max_seq_len: int | None = None,
    too_long: str = "reject",
) -> list[SplitReport]:
    """Data splits valid, base model present and safe to load, target modules present.

    Cheapest first: reading the JSONL takes milliseconds, building the model skeleton seconds.
    With max_seq_len, every example is tokenized with the base model's tokenizer: examples
    over the limit are an error naming how many and the first line (too_long='reject'), or a
    warning with the count (too_long='truncate').
    """
    if method is not None and get_method(method).needs_cuda and not cuda_available():
        raise ModelError(
            f"adapter.method {method} needs a CUDA GPU (4-bit bitsandbytes kernels) and none is "
            "available here; use lora or lora_fa on this machine"
        )
    reports = validate_dataset(data_dir, train_file, eval_file, prompt_field, completion_field)
    preflight_base(base_model, trust_remote_code)
    kinds = layer_kinds(base_model, trust_remote_code)
    check_target_modules(target_modules, linear_names(kinds), kinds, method or "lora")
    if max_seq_len is not None:
        tokenizer = load_tokenizer(base_model, trust_remote_code)
        for report in reports:
            examples = read_split(report.path, prompt_field, completion_field)
            cut = tokenize(examples, tokenizer, max_seq_len, too_long, source=report.path)
            if cut.truncated:
                report.warnings.append(
                    f"{cut.truncated} example(s) longer than data.max_seq_len={max_seq_len} "
                    "tokens will be truncated"
                )
    return reports
