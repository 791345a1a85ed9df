"""`training.kernels: liger`: Liger Kernel's fused Triton kernels through the Trainer.

The Trainer applies them itself (`TrainingArguments(use_liger_kernel=True)`, which calls Liger's
`_apply_liger_kernel_to_instance`): RMSNorm, RoPE, SwiGLU and a fused linear + cross-entropy
that never holds the logits either. For a model type Liger has no patch for, Liger only logs
and the run trains as without it, so an unsupported base is refused here, before anything is
loaded, from Liger's own table of model types (`MODEL_TYPE_TO_APPLY_LIGER_FN`, the one
`AutoLigerKernelForCausalLM` looks up). Liger is an optional install (the `gpu` extra): its
kernels are Triton, so it needs CUDA and the `triton` package.
"""

from __future__ import annotations

import importlib.util

from models.base_model.loading import ModelError


def liger_model_types() -> frozenset[str] | None:
    """The model types Liger patches, or None where liger-kernel is not installed."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def check_kernels(kernels: str, model_type: str, base_model: str, cuda: bool) -> None:
    """training.kernels can run here on this base, or the run is refused in one line."""
    if kernels == "none":
        return
    supported = liger_model_types()
    if supported is None:
        raise ModelError(
            "training.kernels: liger needs the liger-kernel package, which is not installed "
            "here (pip install 'loraflow[gpu]'); set training.kernels: none"
        )
    if not cuda:
        raise ModelError(
            "training.kernels: liger runs Triton kernels on a CUDA GPU and none is available "
            "here; set training.kernels: none"
        )
    if model_type not in supported:
        raise ModelError(
            f"training.kernels: liger has no kernels for base_model {base_model} (model type "
            f"{model_type!r}; Liger supports {', '.join(sorted(supported))}); set "
            "training.kernels: none"
        )
