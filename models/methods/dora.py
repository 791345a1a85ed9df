"""DoRA (Liu et al., 2024): LoRA on the direction of W plus a trained magnitude vector per row."""

from functools import partial

from models.methods.base import AdapterMethod, build_lora

METHOD = AdapterMethod(
    name="dora",
    summary="LoRA direction + trained magnitude vector",
    build=partial(build_lora, use_dora=True),
    cannot_shard="dora computes each row's norm of W + B x A in every forward, and PEFT's DoRA "
    "cannot mix the sharded W (a DTensor) with its whole adapter tensors",
)
