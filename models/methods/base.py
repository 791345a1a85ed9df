"""What every adapter method provides, and the settings it is built from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class AdapterSpec:
    """Flat adapter settings, taken from `adapter.*` of the run config."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str] | str
    seed: int


@dataclass(frozen=True)
class AdapterMethod:
    """One adapter method.

    build: wraps a base model with the adapter (seeded) and leaves exactly the parameters this
        method trains with requires_grad=True.
    param_groups: optional optimizer parameter groups (e.g. per-matrix learning rates); None means
        one group with every trainable parameter.
    """

    name: str
    summary: str
    build: Callable[[torch.nn.Module, AdapterSpec], Any]
    param_groups: Callable[[torch.nn.Module, float], list[dict]] | None = None


def lora_config(spec: AdapterSpec, **extra: Any):
    """The PEFT LoraConfig that the LoRA-shaped methods share."""
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
        **extra,
    )


def seeded_peft_model(model: torch.nn.Module, config: Any, seed: int):
    """get_peft_model with the seed set first: the adapter's random init happens in this call."""
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(seed)
    return get_peft_model(model, config)
