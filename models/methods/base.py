"""What every adapter method provides, and the settings it is built from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# nn.Linear (fused projections included) and transformers' Conv1D (GPT-2): what PEFT's
# all-linear adapts. Spelled here, not imported, so the registry loads without torch.
LINEAR_KINDS = frozenset({"Linear", "Conv1D"})
# PEFT's LoRA also adapts embeddings (its own lora_embedding_A/B), merged like any other layer.
LORA_KINDS = LINEAR_KINDS | {"Embedding"}


@dataclass(frozen=True)
class AdapterSpec:
    """Flat adapter settings, taken from `adapter.*` of the run config."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str] | str
    seed: int
    delta_scale: float = 0.5
    loraplus_lr_ratio: float = 16.0


@dataclass(frozen=True)
class AdapterMethod:
    """One adapter method. Only `build` is required; the hooks default to plain LoRA behaviour.

    build: wraps a base model with the adapter (seeded) and leaves exactly the parameters this
        method trains with requires_grad=True.
    check: rejects settings this method cannot use (raise ValueError); runs before any loading.
    needs_cuda: the method cannot run without a CUDA device (checked before any loading).
    load_kwargs: extra keyword arguments for loading the base model (e.g. 4-bit quantization).
    param_groups: optimizer parameter groups (e.g. per-matrix learning rates); None means one
        group holding every trainable parameter.
    callbacks: Trainer callbacks the method needs during training.
    before_save: adjusts the adapter before it is saved so that the saved adapter on the
        unmodified base reproduces the trained model.
    layer_kinds: the layer kinds (models.loading.kinds_of) the method can adapt; the check
        refuses target_modules naming any other kind.
    """

    name: str
    summary: str
    build: Callable[[torch.nn.Module, AdapterSpec], Any]
    check: Callable[[AdapterSpec], None] | None = None
    needs_cuda: bool = False
    load_kwargs: Callable[[], dict[str, Any]] | None = None
    param_groups: Callable[[torch.nn.Module, float, AdapterSpec], list[dict]] | None = None
    callbacks: Callable[[torch.nn.Module, AdapterSpec], list] | None = None
    before_save: Callable[[torch.nn.Module, AdapterSpec], None] | None = None
    layer_kinds: frozenset[str] = LINEAR_KINDS


def lora_config(spec: AdapterSpec, **extra: Any):
    """The PEFT LoraConfig that the LoRA-shaped methods share."""
    from peft import LoraConfig

    return LoraConfig(
        **{
            "r": spec.r,
            "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout,
            "target_modules": spec.target_modules,
            "bias": "none",
            "task_type": "CAUSAL_LM",
            **extra,
        }
    )


def seeded_peft_model(model: torch.nn.Module, config: Any, seed: int):
    """get_peft_model with the seed set first: the adapter's random init happens in this call."""
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(seed)
    return get_peft_model(model, config)


def build_lora(model: torch.nn.Module, spec: AdapterSpec, **extra: Any):
    """Plain PEFT LoRA (with optional LoraConfig options such as use_dora, use_rslora)."""
    return seeded_peft_model(model, lora_config(spec, **extra), spec.seed)
