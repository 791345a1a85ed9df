"""QLoRA (Dettmers et al., 2023): LoRA on a 4-bit NF4-quantized base (bitsandbytes, CUDA only)."""

from __future__ import annotations

from models.methods.base import AdapterMethod, AdapterSpec, build_lora


def load_kwargs(sharded: bool = False) -> dict:
    """4-bit NF4 with double quantization, computing in bf16 where the GPU supports it.

    sharded (FSDP-QLoRA): the 4-bit weights are stored in the compute dtype
    (bnb_4bit_quant_storage), the dtype the rest of the base loads in (bf16: the checks
    refuse FSDP-QLoRA elsewhere), so that every weight FSDP shards is of one float dtype
    (bitsandbytes' and PEFT's FSDP-QLoRA guides).
    """
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            **({"bnb_4bit_quant_storage": compute} if sharded else {}),
        )
    }


def build(model, spec: AdapterSpec):
    """Prepare the quantized base for training (casts norms to fp32), then LoRA.

    A base whose 4-bit weights are stored in a float dtype (sharded: load_kwargs) keeps its
    norms in that dtype instead: FSDP shards weights of one dtype (TRL skips the cast for
    sharded QLoRA too).
    """
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    sharded = any(
        isinstance(p, bnb.nn.Params4bit) and p.dtype.is_floating_point for p in model.parameters()
    )
    if not sharded:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return build_lora(model, spec)


METHOD = AdapterMethod(
    name="qlora",
    summary="LoRA on a 4-bit quantized base (CUDA + bitsandbytes)",
    build=build,
    needs_cuda=True,
    load_kwargs=load_kwargs,
)
