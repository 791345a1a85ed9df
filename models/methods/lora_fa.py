"""LoRA-FA (Zhang et al., 2023): LoRA with A frozen at its random init; only B is trained.

With A frozen the backward pass needs only A's r-dim output and the dropout's keep mask, not
the layer input: every adapted layer runs its adapter path through
models.training.frozen_a, which saves exactly those (the mask as bits), at any dropout. The
adapter is a standard PEFT LoRA adapter (A saved as initialised), merged and loaded as one.
"""

from models.methods.base import AdapterMethod, AdapterSpec, build_lora, lora_layers


def build(model, spec: AdapterSpec):
    """Wrap `model` with LoRA, freeze every lora_A so only the B matrices train, and route the
    adapter path through the frozen-A autograd function."""
    from models.training.frozen_a import install

    peft_model = build_lora(model, spec)
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)
    install(peft_model)
    return peft_model


def saved_bytes_per_token(model, spec: AdapterSpec, width: int) -> int:
    """Per adapted layer: A drop(x) (r values) and, with dropout, one bit per input value."""
    mask = spec.dropout > 0
    return sum(
        spec.r * width + mask * -(-layer.in_features // 8) for _, layer in lora_layers(model)
    )


METHOD = AdapterMethod(
    name="lora_fa",
    summary="A frozen at init, only B trained",
    build=build,
    saved_bytes_per_token=saved_bytes_per_token,
)
