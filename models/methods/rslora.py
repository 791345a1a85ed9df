"""rsLoRA (Kalajdzievski, 2023): LoRA scaled by alpha/sqrt(r), stable at large ranks."""

from functools import partial

from models.methods.base import LORA_KINDS, AdapterMethod, build_lora

METHOD = AdapterMethod(
    name="rslora",
    summary="LoRA scaled by alpha/sqrt(r)",
    build=partial(build_lora, use_rslora=True),
    layer_kinds=LORA_KINDS,
)
