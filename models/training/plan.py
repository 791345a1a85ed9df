"""What a run would train, computed on the meta device: no weights are loaded or allocated."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

from models.base_model.loading import meta_model
from models.base_model.paths import is_local
from models.config.specs import TrainSpec
from models.export.merge import export_peak_bytes
from models.methods import get_method
from models.methods.base import lora_saved_bytes_per_token

# FSDP2 holds the decoder layer it computes whole, keeps that layer's all-gather output until the
# next layer's gather is copied out (forward), and the next gather needs its own output; on gloo
# the collective adds a temporary of the same size (measured: ~3 layers, docs/team.md).
GATHERED_LAYERS = 3
# DistributedDataParallel broadcasts rank 0's parameters, frozen ones too, when it wraps the
# model, one coalesced bucket of up to 250 MiB at a time (torch's broadcast_bucket_size).
DDP_BROADCAST_BUCKET = 250 * 2**20
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
    # Per process (rank): num_processes x num_nodes ranks; with sharding fsdp each keeps
    # base_weight_bytes / ranks and gathers whole decoder layers (layer_bytes each) to compute.
    sharding: str = "none"
    ranks: int = 1
    layer_bytes: int = 0  # frozen weights of the largest decoder layer
    base_weight_bytes_per_rank: int = 0
    gathered_bytes: int = 0  # layers held whole at once while computing (sharded only)
    output_embedding_bytes: int = 0  # kept whole from forward to backward when sharded
    broadcast_bytes: int = 0  # DDP's broadcast of the parameters as it wraps the model

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
    per process, at spec.batch_size x data.max_seq_len: with sharding fsdp over
    num_processes x num_nodes ranks each keeps its share of the base and gathers whole layers
    (models.training.sharding); the adapter, its optimizer state and the activations are per
    process either way.

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
    ranks = spec.num_processes * spec.num_nodes
    sharded = spec.sharding == "fsdp" and ranks > 1
    per_rank = -(-base_bytes // ranks) if sharded else base_bytes
    layer = largest_layer_bytes(model, width)
    head = output_embedding_bytes(model, width)
    gathered = GATHERED_LAYERS * layer + head if sharded else 0
    broadcast = min(base_bytes, DDP_BROADCAST_BUCKET) if ranks > 1 and not sharded else 0
    return Plan(
        method=method,
        trainable_params=trainable,
        total_params=total,
        trainable_percent=100.0 * trainable / total,
        adapter_bytes=adapter,
        base_weight_bytes=base_bytes,
        optimizer_state_bytes=optimizer,
        activation_bytes=acts,
        est_peak_memory_bytes=per_rank + gathered + broadcast + optimizer + acts,
        est_export_peak_bytes=export_peak,
        batch_size=batch_size,
        seq_len=seq_len,
        dtype=dtype,
        sharding=spec.sharding if sharded else "none",
        ranks=ranks,
        layer_bytes=layer,
        base_weight_bytes_per_rank=per_rank,
        gathered_bytes=gathered,
        output_embedding_bytes=head,
        broadcast_bytes=broadcast,
    )


def largest_layer_bytes(model, width: int) -> int:
    """Bytes of the frozen weights of the largest decoder layer (the classes the base names in
    `_no_split_modules`, the units FSDP shards), at `width` bytes a value."""
    layers = set(getattr(model, "_no_split_modules", None) or [])
    sizes = [
        sum(p.numel() for p in m.parameters() if not p.requires_grad)
        for m in model.modules()
        if type(m).__name__ in layers
    ]
    return max(sizes, default=0) * width


def output_embedding_bytes(model, width: int) -> int:
    """Bytes of the frozen output embedding (the input one where they are tied): transformers'
    FSDP plan keeps it whole from the forward pass to the backward (keep_full_weight)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return weight.numel() * width if weight is not None else 0


def fsdp_ranks_needed(plan: Plan, gpu_memory_bytes: int) -> int | None:
    """The fewest ranks over which sharding (fsdp) fits the plan's training in
    `gpu_memory_bytes` per card: 1 when it fits one card unsharded, None when it fits no
    number of ranks (the gathered layers, adapter state and activations alone are too big)."""
    whole = plan.base_weight_bytes + plan.optimizer_state_bytes + plan.activation_bytes
    if whole <= gpu_memory_bytes:
        return 1
    fixed = (
        GATHERED_LAYERS * plan.layer_bytes
        + plan.output_embedding_bytes
        + plan.optimizer_state_bytes
        + plan.activation_bytes
    )
    room = gpu_memory_bytes - fixed
    if room <= 0:
        return None
    return max(2, -(-plan.base_weight_bytes // room))


def card_fit(plan: Plan, gpu_memory: str | None) -> dict:
    """{} without a card; else its bytes and fsdp_ranks_needed (`loraflow plan --gpu-memory`)."""
    if not gpu_memory:
        return {}
    card = parse_memory(gpu_memory)
    return {"gpu_memory_bytes": card, "fsdp_ranks_needed": fsdp_ranks_needed(plan, card)}


def sharding_notes(plan: Plan, gpu_memory: str | None) -> str:
    """The plan's lines on sharding and on the card (each after a newline; "" for none)."""
    gib, lines = 1024**3, []
    if plan.sharding == "fsdp":
        lines.append(
            f"per rank          {plan.ranks} ranks, fsdp: weights "
            f"{plan.base_weight_bytes_per_rank / gib:.2f} GiB + gathered layers and output "
            f"embedding {plan.gathered_bytes / gib:.2f} GiB (in the peak above)"
        )
    elif plan.broadcast_bytes:
        lines.append(
            f"per rank          {plan.ranks} ranks, DDP: the whole base + its broadcast bucket "
            f"{plan.broadcast_bytes / gib:.2f} GiB (in the peak above)"
        )
    fit = card_fit(plan, gpu_memory)
    if fit:
        card = fit["gpu_memory_bytes"] / gib
        lines.append(f"on a {card:.1f} GiB card  {fits_verdict(fit['fsdp_ranks_needed'])}")
    return "".join("\n" + line for line in lines)


def fits_verdict(ranks: int | None) -> str:
    """What fsdp_ranks_needed's answer means for the run, in words."""
    if ranks == 1:
        return "fits one card unsharded"
    if ranks is None:
        return "fits on no number of ranks: lower batch_size or max_seq_len, or checkpoint"
    return f"needs training.sharding: fsdp over >= {ranks} ranks (num_processes x num_nodes)"


def parse_memory(text: str) -> int:
    """'80GiB', '80GB', '24G', '512MiB', '1000000' -> bytes (GB is 10^9, GiB and G 2^30)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B?)\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (e.g. 80GiB, 24GB)")
    number, prefix, suffix = float(match[1]), match[2].upper(), match[3].lower()
    power = "KMGT".find(prefix) + 1 if prefix else 0
    base = 1000 if suffix == "b" else 1024
    return int(number * base**power)


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
