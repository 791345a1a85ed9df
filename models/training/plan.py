"""What a run would train, computed on the meta device: no weights are loaded or allocated."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from models.base_model.loading import meta_model
from models.base_model.paths import is_local
from models.config.specs import TrainSpec
from models.export.merge import export_peak_bytes
from models.methods import get_method
from models.methods.base import lora_saved_bytes_per_token

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAM_BYTES_PER_TRAINABLE = 4 + 4 + 8  # fp32 weight, fp32 grad, two fp32 Adam moments


@dataclass
class Plan:
    """Parameter counts are exact; memory figures are an estimate (see estimate_peak_memory)."""

    method: str
    trainable_params: int
    total_params: int
    trainable_percent: float
    adapter_bytes: int
    base_weight_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int
    est_peak_memory_bytes: int
    est_export_peak_bytes: int  # merge-and-export (models.export.merge.export_peak_bytes)
    batch_size: int
    seq_len: int
    dtype: str

    def to_dict(self) -> dict:
        return asdict(self)


def activation_bytes(
    config,
    batch_size: int,
    seq_len: int,
    dtype_bytes: int,
    checkpointing: bool = False,
    adapter_bytes_per_token: int = 0,
    logit_tokens: int | None = None,
) -> int:
    """Activations kept for the backward pass of a decoder-only transformer, per step.

    Per layer and token: ~10 hidden-sized tensors (norms, q/k/v/o inputs and outputs, residuals)
    and ~3 MLP-width tensors (gate, up, their product), plus the attention probabilities
    (heads x seq per token) for kernels that materialize them. On top: the fp32 logits and
    their gradient over the vocabulary. Frozen base layers still keep activations because the
    adapters sit inside them; what the adapters themselves keep, where the methods differ, is
    adapter_bytes_per_token (all layers; AdapterMethod.saved_bytes_per_token). With gradient
    checkpointing every layer keeps only its input, and one layer at a time holds its full
    activations while it is recomputed. logit_tokens: the tokens whose logits are alive at
    once (one chunk with training.chunked_loss; default all of them).
    """
    hidden = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * hidden)
    heads = config.num_attention_heads
    layers = config.num_hidden_layers
    tokens = batch_size * seq_len
    per_layer = tokens * (10 * hidden + 3 * inter + heads * seq_len) * dtype_bytes
    logits = (tokens if logit_tokens is None else min(tokens, logit_tokens)) * config.vocab_size * 8
    adapters = tokens * adapter_bytes_per_token
    if checkpointing:
        return layers * tokens * hidden * dtype_bytes + per_layer + adapters // layers + logits
    return layers * per_layer + adapters + logits


def _chunk_of_logits(spec: TrainSpec, config, tokens: int) -> int | None:
    """Tokens per chunk where training will take the chunked loss, else None (all logits).
    On the meta device the plan reads the config only; training also runs the model
    (models.base_model.chunked_loss.refusal)."""
    from models.base_model.chunked_loss import chunk_tokens, config_refusal

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    step = chunk_tokens(text.vocab_size)
    if spec.chunked_loss == "off" or spec.num_processes > 1 or spec.kernels != "none":
        return None
    if spec.chunked_loss == "on" or (tokens > step and config_refusal(text) is None):
        return step
    return None


def plan_run(spec: TrainSpec) -> Plan:
    """Exact trainable/total parameter counts and adapter size; estimated peak training memory,
    per process, at spec.batch_size x data.max_seq_len.

    dtype is the compute dtype of the frozen base ('auto' is taken as float32); qlora counts
    the frozen linear weights at 4 bits (plus one fp32 scale per 64 weights).
    """
    from peft import get_peft_model_state_dict

    method, batch_size, seq_len = spec.method, spec.batch_size, spec.data.max_seq_len
    model = meta_model(spec.base_model, spec.trust_remote_code)
    config = model.config
    # QLoRA trains exactly LoRA's parameters; only the frozen weights' storage differs, and its
    # build step (k-bit preparation) needs real weights.
    counted_as = get_method("lora" if method == "qlora" else method)
    with torch.device("meta"):
        model = counted_as.build(model, spec.adapter)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    saved = get_peft_model_state_dict(model)
    adapter = sum(t.numel() * 4 for t in saved.values())  # adapters are kept and saved in fp32

    dtype = "float32" if spec.dtype == "auto" else spec.dtype
    width = DTYPE_BYTES[dtype]
    frozen = total - trainable
    if method == "qlora":
        linear = sum(
            m.weight.numel()
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lora_" not in n and "lm_head" not in n
        )
        base_bytes = int(linear * (0.5 + 4 / 64)) + (frozen - linear) * width
    else:
        base_bytes = frozen * width
    optimizer = trainable * ADAM_BYTES_PER_TRAINABLE
    saved_per_token = counted_as.saved_bytes_per_token or lora_saved_bytes_per_token
    acts = activation_bytes(
        config,
        batch_size,
        seq_len,
        width,
        spec.gradient_checkpointing,
        saved_per_token(model, spec.adapter, width),
        logit_tokens=_chunk_of_logits(spec, config, batch_size * seq_len),
    )
    export_peak = export_peak_bytes(
        largest_base_file(spec.base_model, fallback=base_bytes),
        largest_adapted_weight(model),
        adapter,
    )
    return Plan(
        method=method,
        trainable_params=trainable,
        total_params=total,
        trainable_percent=100.0 * trainable / total,
        adapter_bytes=adapter,
        base_weight_bytes=base_bytes,
        optimizer_state_bytes=optimizer,
        activation_bytes=acts,
        est_peak_memory_bytes=base_bytes + optimizer + acts,
        est_export_peak_bytes=export_peak,
        batch_size=batch_size,
        seq_len=seq_len,
        dtype=dtype,
    )


def largest_base_file(base_model: str, fallback: int) -> int:
    """Bytes of the base's largest safetensors file; `fallback` (the whole base in one file,
    the worst case) for a hub id or a directory without weights."""
    from pathlib import Path

    from models.export.shards import ShardError, checkpoint_files

    if is_local(base_model):
        try:
            return max(p.stat().st_size for p in checkpoint_files(Path(base_model)))
        except ShardError:
            pass
    return fallback


def largest_adapted_weight(model) -> int:
    """Elements of the largest weight an adapter layer of the (meta) PEFT model changes."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return max(
        (
            m.get_base_layer().weight.numel()
            for m in model.modules()
            if isinstance(m, BaseTunerLayer)
        ),
        default=0,
    )
