"""LoRA (Hu et al., 2021): W frozen, W + (alpha/r) * B A with A random and B = 0 at init."""

from models.methods.base import LORA_KINDS, AdapterMethod, build_lora

METHOD = AdapterMethod(
    name="lora", summary="A and B trained, base frozen", build=build_lora, layer_kinds=LORA_KINDS
)
