"""LoRA-FA (Zhang et al., 2023): LoRA with A frozen at its random init; only B is trained.

Freezing A before the first forward pass also means autograd does not keep A's input for the
backward pass (it only needs A's output to form B's gradient), which is where the memory
saving comes from.
"""

from models.methods.base import AdapterMethod, AdapterSpec, build_lora


def build(model, spec: AdapterSpec):
    """Wrap `model` with LoRA, then freeze every lora_A so only the B matrices train."""
    peft_model = build_lora(model, spec)
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)
    return peft_model


METHOD = AdapterMethod(name="lora_fa", summary="A frozen at init, only B trained", build=build)
