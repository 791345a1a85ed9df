"""LoRA+ (Hayou et al., 2024): LoRA with B learning `loraplus_lr_ratio` times faster than A."""

from models.methods.base import AdapterMethod, AdapterSpec, build_lora


def param_groups(model, learning_rate: float, spec: AdapterSpec) -> list[dict]:
    """Two groups: every lora_A (and anything else trainable) at lr, every lora_B at ratio x lr."""
    a_params, b_params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (b_params if ".lora_B." in name else a_params).append(param)
    return [
        {"params": a_params, "lr": learning_rate, "name": "lora_A"},
        {"params": b_params, "lr": learning_rate * spec.loraplus_lr_ratio, "name": "lora_B"},
    ]


def check(spec: AdapterSpec) -> None:
    if spec.loraplus_lr_ratio <= 0:
        raise ValueError(f"adapter.loraplus_lr_ratio must be > 0 (got {spec.loraplus_lr_ratio})")


METHOD = AdapterMethod(
    name="lora_plus",
    summary="LoRA with B's learning rate = ratio x A's",
    build=build_lora,
    check=check,
    param_groups=param_groups,
)
