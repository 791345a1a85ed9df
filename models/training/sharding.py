"""Sharded data-parallel training (`training.sharding: fsdp`): FSDP2, set up by transformers.

With DDP (sharding: none) every process holds the whole base. With FSDP the base is sharded as
it is loaded: `from_pretrained(distributed_config=DistributedConfig(fsdp_size=N))` applies
`torch.distributed.fsdp.fully_shard` to every decoder layer (`layers.*`), the input embedding
and the final norm (the model's FSDP plan), and each rank reads only its 1/N of every weight.
In the forward and backward pass each layer's full weights are all-gathered just before it
runs and freed after, so a rank holds its shards plus a few layers in full (below).

Frozen and trainable parameters: the frozen base weights are the sharded ones. The adapter is
attached afterwards (PEFT, as for any base) and its small trainable weights stay whole on every
rank: the Trainer, seeing a model sharded by transformers, wraps nothing in DDP, broadcasts
these weights from rank 0 and averages their gradients over all ranks after each accumulation
window. Gradients and optimizer state exist only for the adapter, so only the frozen base needs
sharding; accelerate's own FSDP wrapping (TrainingArguments `fsdp`) would do the same for
sharded trainable weights, but accelerate enables it on accelerators only, never on CPU/gloo,
where this is tested.

Saving: only what PEFT saves is gathered, never the frozen base. The model's own state dict is
sharded (FSDP2 hands out each rank's shards as DTensors, no collective). PEFT's
get_peft_model_state_dict, handed DTensors, gathers every one of them (its tensor-parallel path,
taken for an FSDP model too), so saved_state_dict asks it which entries it saves on a stand-in
with no DTensor in it, and gathers, on every rank and in the same order, only the sharded
entries among them (none for an adapter attached after sharding; a frozen embedding PEFT saves
after a vocabulary resize would be one). save_pretrained then writes the same tensors as from a
full state dict: a standard PEFT adapter, byte for byte the one the full gather gave, that
PeftModel.from_pretrained loads and the export merges. The full gather (torch's
get_model_state_dict with full_state_dict) put a whole copy of the base in rank 0's memory at the
final save; PEFT's own gather put one in every rank at each checkpoint (issue 38;
docs/performance.md, row 15).

Checkpoints: the Trainer saves only the adapter and its trainer_state.json for a base sharded
at load (save_only_model; it refuses more), through sharded_trainer's save_model, which saves
from saved_state_dict too; every rank adds the optimizer, schedule and RNG state beside them
(models.training.checkpoints.sharded_train_state), so a run killed on any rank resumes from the
newest complete checkpoint with the adapter of an uninterrupted run.

Memory per rank: the rank's shard, about three decoder layers whole at the end of the forward
pass (the one computing; its all-gather output, which FSDP2 keeps until the next layer's
gather is copied out; the next gather, and on gloo that collective's own temporary), the
output embedding (kept whole from forward to backward by transformers' FSDP plan), the adapter
state and the activations: models.training.plan counts these (GATHERED_LAYERS).
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


def saved_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The entries of a sharded model's state dict that PEFT's save_pretrained saves, whole:
    the adapter's as they are (references, no copies), a sharded one gathered; None for a model
    with no sharded parameter (it saves as it is).

    A collective for a sharded model (one gather per sharded entry PEFT saves; none for an
    adapter attached after sharding): every rank must call it. The frozen base is not gathered.
    """
    import torch
    from peft import get_peft_model_state_dict
    from torch.distributed.tensor import DTensor

    state = model.state_dict()  # FSDP2: this rank's shards, no collective
    if not any(isinstance(v, DTensor) for v in state.values()):
        return None
    # PEFT picks by name and passes the picked values through, but given a DTensor it gathers
    # every one (its tensor-parallel path, taken for FSDP too), so it is asked on a stand-in
    # holding each entry's index and no DTensor.
    keys = list(state)
    stand_in = {key: torch.tensor([i]) for i, key in enumerate(keys)}
    picked = [keys[int(v)] for v in get_peft_model_state_dict(model, state_dict=stand_in).values()]
    return {
        key: state[key].full_tensor() if isinstance(state[key], DTensor) else state[key]
        for key in picked
    }


def sharded_trainer():
    """The Trainer class for a base sharded at load: its checkpoints save the adapter from
    saved_state_dict. The Trainer's own save hands PEFT the model's state dict, and PEFT
    gathers every sharded weight into it, a whole copy of the base in every rank at each
    checkpoint."""
    import os

    import torch
    from transformers import Trainer
    from transformers.trainer import TRAINING_ARGS_NAME

    class ShardedTrainer(Trainer):
        def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
            out = output_dir or self.args.output_dir
            state = saved_state_dict(self.model)  # every rank takes part
            if not self.args.should_save:
                return
            os.makedirs(out, exist_ok=True)
            self.model.save_pretrained(out, state_dict=state)
            tokenizer = self.processing_class or getattr(self.data_collator, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(out)
            torch.save(self.args, os.path.join(out, TRAINING_ARGS_NAME))

    return ShardedTrainer


def resident_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this process keeps between steps: its shard of each sharded
    (DTensor) parameter, the whole of any other."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total
