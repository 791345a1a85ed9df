"""LoRA (Hu et al., 2021): W frozen, W + (alpha/r) * B A with A random and B = 0 at init."""

from models.methods.base import AdapterMethod, AdapterSpec, lora_config, seeded_peft_model


def build(model, spec: AdapterSpec):
    """Wrap `model` with trainable LoRA A and B on the target modules."""
    return seeded_peft_model(model, lora_config(spec), spec.seed)


METHOD = AdapterMethod(name="lora", summary="A and B trained, base frozen", build=build)
