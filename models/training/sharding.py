"""Sharded data-parallel training (`training.sharding: fsdp`): FSDP2, set up by transformers.

With DDP (sharding: none) every process holds the whole base. With FSDP the base is sharded as
it is loaded: `from_pretrained(distributed_config=DistributedConfig(fsdp_size=N))` applies
`torch.distributed.fsdp.fully_shard` to every decoder layer (`layers.*`), the input embedding
and the final norm (the model's FSDP plan), and each rank reads only its 1/N of every weight.
In the forward and backward pass each layer's full weights are all-gathered just before it
runs and freed after, so a rank holds its shards plus about one layer in full.

Frozen and trainable parameters: the frozen base weights are the sharded ones. The adapter is
attached afterwards (PEFT, as for any base) and its small trainable weights stay whole on every
rank: the Trainer, seeing a model sharded by transformers, wraps nothing in DDP, broadcasts
these weights from rank 0 and averages their gradients over all ranks after each accumulation
window. Gradients and optimizer state exist only for the adapter, so only the frozen base needs
sharding; accelerate's own FSDP wrapping (TrainingArguments `fsdp`) would do the same for
sharded trainable weights, but accelerate enables it on accelerators only, never on CPU/gloo,
where this is tested.

Saving: every rank takes part in gathering the full state dict (torch's get_model_state_dict,
full_state_dict and cpu_offload: it lands in rank 0's host memory only, one tensor at a time
through the collectives), and PEFT's save_pretrained picks the adapter's tensors out of it: a
standard PEFT adapter that PeftModel.from_pretrained loads and the export merges. Rank 0's host
memory holds one full copy of the base while it saves.

Checkpoints: the Trainer saves only the adapter and its trainer_state.json for a base sharded
at load (save_only_model; it refuses more); every rank adds the optimizer, schedule and RNG
state beside them (models.training.checkpoints.sharded_train_state), so a run killed on any
rank resumes from the newest complete checkpoint with the adapter of an uninterrupted run.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SHARDINGS = ("none", "fsdp")


def shard_refusal(sharding: str, method_name: str, cannot_shard: str) -> str:
    """Why `method_name` cannot train with `sharding` (one line), or "" when it can."""
    if sharding == "fsdp" and cannot_shard:
        return f"training.sharding fsdp cannot train adapter.method {method_name}: {cannot_shard}"
    return ""


def wrap_refusal(model: torch.nn.Module, base_model: str) -> str:
    """Why FSDP would not shard `model` (a skeleton is enough) per decoder layer, or "".

    transformers shards the modules its FSDP plan names (`model.fsdp_plan`, e.g.
    `model.layers.*`); where no wildcard rule names a module of this architecture (GPT-2's
    layers are `transformer.h.*`) only the whole model is one unit, gathered whole on every
    rank for each forward: nothing saved at the peak.
    """
    rules = [rule for rule in (getattr(model, "fsdp_plan", None) or {}) if "*" in rule]
    patterns = [re.compile(re.escape(rule).replace(r"\*", r"\d+")) for rule in rules]
    names = [name for name, _ in model.named_modules()]
    if any(p.fullmatch(name) for p in patterns for name in names):
        return ""
    return (
        f"training.sharding fsdp: the FSDP plan of base model {base_model} ({rules or 'none'}) "
        "names none of its decoder layers, so nothing would be sharded per layer; use sharding: "
        "none"
    )


def fsdp_job(sharding: str, world_size: int) -> bool:
    """Whether FSDP shards the base at all: sharding fsdp with more than one process."""
    if sharding not in SHARDINGS:
        raise ValueError(f"training.sharding must be one of {SHARDINGS} (got {sharding!r})")
    return sharding == "fsdp" and world_size > 1


def shards_at_load(sharding: str, world_size: int, quantized: bool = False) -> bool:
    """Whether the base is sharded as it loads: an FSDP job with a base that is not quantized
    (a 4-bit one is sharded by the Trainer: trainer_fsdp_arguments)."""
    return fsdp_job(sharding, world_size) and not quantized


def sharded_load_kwargs(sharding: str, world_size: int, quantized: bool = False) -> dict[str, Any]:
    """from_pretrained keywords that shard the base over `world_size` processes ({}: none).

    Called in every process of a torchrun job; transformers starts the process group (gloo on
    CPU, NCCL on CUDA) if nothing has yet.
    """
    if not shards_at_load(sharding, world_size, quantized):
        return {}
    from transformers.distributed import DistributedConfig

    return {"distributed_config": DistributedConfig(fsdp_size=world_size)}


def trainer_fsdp_arguments(sharding: str, world_size: int, quantized: bool) -> dict[str, Any]:
    """TrainingArguments keywords for FSDP-QLoRA ({}: not that): the 4-bit base loads whole on
    every rank (bitsandbytes quantizes as it loads, its 4-bit weights stored in the compute
    dtype: bnb_4bit_quant_storage) and the Trainer shards it through accelerate's FSDP2, per
    decoder layer (the model's _no_split_modules), as bitsandbytes' and PEFT's FSDP-QLoRA
    guides do. CUDA only; never run here (no GPU)."""
    if fsdp_job(sharding, world_size) and quantized:
        return {"fsdp": True, "fsdp_config": {"version": 2}}
    return {}


# bitsandbytes' first release with bnb_4bit_quant_storage (4-bit weights FSDP can shard).
BNB_QUANT_STORAGE = (0, 43)


def quantized_shard_refusal(
    method_name: str, cuda: bool, bnb_version: str | None, bf16: bool
) -> str:
    """Why FSDP cannot shard `method_name`'s 4-bit base on this machine (one line), or ""."""
    why = f"training.sharding fsdp with adapter.method {method_name} needs "
    if not cuda:
        return why + "CUDA GPUs (bitsandbytes' 4-bit kernels) and none is available here"
    version = tuple(int(p) for p in re.findall(r"\d+", bnb_version or "")[:2])
    if version < BNB_QUANT_STORAGE:
        return (
            why + "bitsandbytes >= 0.43 (4-bit weights stored in the compute dtype, which FSDP "
            f"can shard; got {bnb_version or 'none installed'}): pip install 'bitsandbytes>=0.43'"
        )
    if not bf16:
        return (
            why + "GPUs with bfloat16 (the base, its 4-bit storage and the compute in one "
            "dtype, as FSDP shards them) and this one has none; use sharding: none"
        )
    return ""


def gathered_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full state dict of a sharded model, on rank 0's CPU ({} on the other ranks); None
    for a model with no sharded parameter (it saves as it is).

    A collective for a sharded model: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def resident_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this process keeps between steps: its shard of each sharded
    (DTensor) parameter, the whole of any other."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total
