"""Every check that must pass before anything is trained, written or pushed."""

from __future__ import annotations

from pathlib import Path

from models.base_model.loading import (
    ModelError,
    check_target_modules,
    kinds_of,
    linear_names,
    load_tokenizer,
    meta_model,
    preflight_base,
)
from models.base_model.probes import (
    check_chunked_loss,
    check_gradient_checkpointing,
    check_packing,
)
from models.config.specs import CheckSpec, EvalSpec
from models.data.chat import prepare_tokenizer
from models.data.formats import DataError, read_split
from models.data.prepared import prepared_reports
from models.data.splits import SplitReport
from models.evaluation.evaluate import slices_of
from models.evaluation.harness import check_tasks
from models.evaluation.metrics import check_custom
from models.methods import get_method
from models.training.kernels import check_kernels
from models.training.sharding import quantized_shard_refusal, wrap_refusal


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def bitsandbytes_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return None


def check_inputs(spec: CheckSpec) -> list[SplitReport]:
    """Data splits valid, base model present and safe to load, target modules present and of a
    kind the method adapts, the evaluation's slice field and custom metrics usable, its lm-eval
    tasks known and loading (and the gate's lm-eval metrics reported by them), packing and
    gradient checkpointing supported by the base's own code.

    Cheapest first: the eval split and the model skeleton take seconds. Both splits are then
    prepared with the base model's tokenizer (models.data.prepared: tokenized once, kept for
    training; minutes for a large set the first time, a digest check after): every row is
    checked there, and examples over data.max_seq_len are an error naming how many and the
    first line (too_long='reject'), or a warning with the count (too_long='truncate').
    """
    data = spec.data
    method = get_method(spec.method)
    if spec.sharding == "fsdp" and method.quantized:
        refusal = quantized_shard_refusal(
            spec.method, cuda_available(), bitsandbytes_version(), bf16_gpu()
        )
        if refusal:
            raise ModelError(refusal)
    if method.needs_cuda and not cuda_available():
        raise ModelError(
            f"adapter.method {spec.method} needs a CUDA GPU (4-bit bitsandbytes kernels) and none "
            "is available here; use lora or lora_fa on this machine"
        )
    if not Path(data.path).is_dir():
        raise DataError(f"{data.path}: data directory not found")
    check_evaluation(spec)
    preflight_base(spec.base_model, spec.trust_remote_code)
    skeleton = meta_model(spec.base_model, spec.trust_remote_code)
    kinds = kinds_of(skeleton)
    check_target_modules(
        spec.target_modules, linear_names(kinds), kinds, spec.method, method.layer_kinds
    )
    if spec.gradient_checkpointing:
        check_gradient_checkpointing(skeleton, spec.base_model)
    check_kernels(spec.kernels, skeleton.config.model_type, spec.base_model, cuda_available())
    if spec.compile and not cuda_available():
        raise ModelError(
            "training.compile compiles for a CUDA GPU and none is available here; set "
            "training.compile: false"
        )
    if spec.sharding == "fsdp" and (refusal := wrap_refusal(skeleton, spec.base_model)):
        raise ModelError(refusal)
    tokenizer = load_tokenizer(spec.base_model, spec.trust_remote_code)
    prepare_tokenizer(tokenizer, data, spec.base_model, spec.trust_remote_code)
    reports = prepared_reports(data, tokenizer)
    # lm-eval: seconds to import, and it reads each task's data.
    check_tasks(spec.lm_eval, spec.gate_metrics)
    # Last: they build and run a copy of the base (models.base_model.probes).
    if spec.packing:
        check_packing(spec.base_model, spec.trust_remote_code)
    if spec.chunked_loss == "on":
        check_chunked_loss(spec.base_model, spec.trust_remote_code)
    return reports


def check_evaluation(spec: CheckSpec) -> None:
    """Every eval record has the slice field (a usable slice name), and every custom metric
    imports and scores the eval completions against themselves to a finite number."""
    examples = read_split(spec.data.eval_path, spec.data)
    evaluation = EvalSpec(
        data=spec.data, batch_size=1, max_new_tokens=1, slice_field=spec.slice_field
    )
    slices_of(evaluation, [e.line for e in examples])
    check_custom(spec.metrics, [e.completion.strip() for e in examples])
