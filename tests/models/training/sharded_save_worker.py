"""One torchrun process of test_sharding's save test: a tiny base sharded at load (FSDP2, gloo),
LoRA attached, its weights set to seeded random values; the adapter saved from
saved_state_dict and from the full gathered state dict (how it was saved before), then as a
checkpoint by the pipeline's Trainer for a sharded base and by the plain Trainer (how
checkpoints were saved before), each under the profiler, which records every collective
(gloo's all_gather) the process runs.

`python -m torch.distributed.run --standalone --nproc-per-node 2 THIS BASE OUT`: rank 0 writes
OUT/saved, OUT/full, OUT/checkpoint-sharded, OUT/checkpoint-plain and OUT/report.json.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from torch.profiler import ProfilerActivity, profile
from transformers import Trainer, TrainingArguments

from models.base_model.loading import load_base
from models.methods import AdapterSpec, get_method
from models.training.sharding import saved_state_dict, sharded_load_kwargs, sharded_trainer

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=0)


def gathers(prof) -> int:
    """Collectives that gather (all_gather, all_gather_into_tensor, ...) the profiler saw."""
    return sum(e.count for e in prof.key_averages() if "all_gather" in e.key)


def main(base: str, out: Path) -> None:
    rank = int(os.environ["RANK"])
    model, _ = load_base(base, **sharded_load_kwargs("fsdp", int(os.environ["WORLD_SIZE"])))
    model = get_method("lora").build(model, SPEC)
    torch.manual_seed(1)  # the same values on every rank, as after a data-parallel training
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    sharded = {k for k, v in model.state_dict().items() if isinstance(v, DTensor)}

    with profile(activities=[ProfilerActivity.CPU]) as saved_prof:
        saved = saved_state_dict(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    with profile(activities=[ProfilerActivity.CPU]) as full_prof:
        full = get_model_state_dict(model, options=options)
    if rank == 0:
        model.save_pretrained(out / "saved", state_dict=saved)
        model.save_pretrained(out / "full", state_dict=full)
    # A checkpoint: the Trainer the pipeline uses for a base sharded at load, and the plain one.
    checkpoint_gathers = {}
    for name, trainer_class in (("sharded", sharded_trainer()), ("plain", Trainer)):
        args = TrainingArguments(
            out / "trainer", use_cpu=True, report_to="none", save_only_model=True
        )
        trainer = trainer_class(model=model, args=args)
        with profile(activities=[ProfilerActivity.CPU]) as checkpoint_prof:
            trainer.save_model(str(out / f"checkpoint-{name}"))
        checkpoint_gathers[name] = gathers(checkpoint_prof)
    if rank == 0:
        report = {
            "sharded": len(sharded),
            "saved_gathers": gathers(saved_prof),
            "full_gathers": gathers(full_prof),
            "sharded_keys_in_saved": sorted(sharded & set(saved)),
            "checkpoint_gathers": checkpoint_gathers,
        }
        (out / "report.json").write_text(json.dumps(report))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
