"""QLoRA (Dettmers et al., 2023): LoRA on a 4-bit NF4-quantized base (bitsandbytes, CUDA only)."""

from __future__ import annotations

from models.methods.base import AdapterMethod, AdapterSpec, build_lora


def load_kwargs() -> dict:
    """4-bit NF4 with double quantization, computing in bf16 where the GPU supports it."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    }


def build(model, spec: AdapterSpec):
    """Prepare the quantized base for training (casts norms, enables input grads), then LoRA."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return build_lora(model, spec)


METHOD = AdapterMethod(
    name="qlora",
    summary="LoRA on a 4-bit quantized base (CUDA + bitsandbytes)",
    build=build,
    needs_cuda=True,
    load_kwargs=load_kwargs,
    cannot_shard="qlora's 4-bit base is stored as uint8, which FSDP cannot shard (sharding it "
    "needs bnb_4bit_quant_storage in the compute dtype, not set up or tested here)",
)
