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
    load_kwargs: extra keyword arguments for loading the base model (e.g. 4-bit quantization),
        given whether FSDP will shard it (`sharded`); a method with them has a quantized base
        (`quantized`), which the Trainer shards (models.training.sharding.trainer_fsdp_arguments).
    param_groups: optimizer parameter groups (e.g. per-matrix learning rates); None means one
        group holding every trainable parameter.
    callbacks: Trainer callbacks the method needs during training.
    before_save: adjusts the adapter before it is saved so that the saved adapter on the
        unmodified base reproduces the trained model.
    layer_kinds: the layer kinds (base_model.loading.kinds_of) the method can adapt; the check
        refuses target_modules naming any other kind.
    saved_bytes_per_token: bytes the adapters keep for the backward pass per token, on top of
        the frozen base's own activations (the plan's memory estimate); default: PEFT's LoRA
        layers with a trained A.
    cannot_shard: why the method cannot train with training.sharding: fsdp (one line, shown by
        the checks); empty = it can.
    """

    name: str
    summary: str
    build: Callable[[torch.nn.Module, AdapterSpec], Any]
    check: Callable[[AdapterSpec], None] | None = None
    needs_cuda: bool = False
    load_kwargs: Callable[..., dict[str, Any]] | None = None
    param_groups: Callable[[torch.nn.Module, float, AdapterSpec], list[dict]] | None = None
    callbacks: Callable[[torch.nn.Module, AdapterSpec], list] | None = None
    before_save: Callable[[torch.nn.Module, AdapterSpec], None] | None = None
    layer_kinds: frozenset[str] = LINEAR_KINDS
    saved_bytes_per_token: Callable[[torch.nn.Module, AdapterSpec, int], int] | None = None
    cannot_shard: str = ""

    @property
    def quantized(self) -> bool:
        """Its base loads quantized (load_kwargs): FSDP then shards it through the Trainer."""
        return self.load_kwargs is not None


def lora_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """(name, layer) of every PEFT LoRA layer of `model`."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def lora_saved_bytes_per_token(model: torch.nn.Module, spec: AdapterSpec, width: int) -> int:
    """What PEFT's LoRA layers keep per token (values of `width` bytes), A trained.

    Each layer keeps A x (r values) for B's gradient, and for A's gradient A's input: with
    dropout its own dropped copy of x plus the dropout's noise (a float per value on CPU, a
    byte on CUDA; counted as a float), else x itself, one copy per input tensor shared by the
    layers that read it (q/k/v, gate/up: layers of one block with the same input width; o_proj's
    input is the attention output, kept anyway).
    """
    total, inputs = 0, set()
    for name, layer in lora_layers(model):
        total += spec.r * width
        if spec.dropout > 0:
            total += 2 * layer.in_features * width
        else:
            inputs.add((name.rsplit(".", 1)[0], layer.in_features))
    return total + sum(features * width for _, features in inputs)


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
