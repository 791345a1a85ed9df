"""`make gpu-check`'s 8B-class row: LoRA on a randomly initialised Llama-3-8B-shaped model.

The shape is Llama-3-8B's (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336,
vocabulary 128256): 7.50B weights in matmuls (lm_head included), 8.03B in all. It is built
directly on the device in bf16 with `AutoModelForCausalLM.from_config(config, dtype=)` inside
`with torch.device(device)` (PyTorch's default-device context; transformers initialises each
weight where it is made): no fp32 CPU init of 32 GB and no checkpoint on disk. That is also why
this is a plain loop and not the pipeline's train_adapter, which loads a saved base (16 GB
written and read back here). What it shares with the pipeline: LoRA built by the method registry
(`get_method("lora").build`, r=16, alpha 32, every linear layer of the decoder), the chunked loss
the pipeline's Trainer computes (models.base_model.chunked_loss.causal_lm_loss: the 128k-vocab
logits of a batch never exist at once), bf16 autocast over fp32 adapter weights as the
Trainer's `bf16=True` runs it, and AdamW on the adapter.

Batch: rows of `seq_len` random tokens, every token labelled. The largest of `batches` that runs
one whole step (forward, backward, optimizer) without running out of CUDA memory, gradient
checkpointing off; only if none fits, the same with it on; the row's note says which. That
step counts as the first warm-up step; `steps` steps are then timed between CUDA syncs.
tokens/s and MFU as the other rows (bench.gpu_check): (4 x matmul weights + 6 x trainable) x
tokens/s over a bf16 8192^2 matmul peak measured in the same process; attention scores are not
counted (at seq 2048 they would add about 10%), nor, with checkpointing on, the recomputation.

Wall time on an H100, estimated from FLOPs as 8B x 6 x tokens (an upper bound: LoRA's frozen
base does 4 N, not 6 N): batch 4 x 2048 tokens is 0.39 PFLOP a step, 1.7 s at 30% of ~790
TFLOP/s, 3.3 s at 15%; 2 warm-up + 5 timed steps = 12-23 s, plus a failed try per larger
batch (out of memory within its forward, about a second each), about 10 s to build the model and
LoRA and 10 s of imports: 35-50 s in all; bench/gpu_session.sh gives it 120 s.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

from bench.assets import TARGETS


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped decoder and the batches tried on it."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq_len: int
    batches: tuple[int, ...]  # tried largest first
    warmup: int  # steps before timing, the batch probe's step included
    steps: int  # timed


LLAMA3_8B = Shape(
    hidden=4096,
    layers=32,
    heads=32,
    kv_heads=8,
    intermediate=14336,
    vocab=128256,
    seq_len=2048,
    batches=(8, 4, 2, 1),
    warmup=2,
    steps=5,
)
# The same code path on a CPU (tests/test_bench_gpu.py); rows longer than one chunk of logits so the
# chunked loss loops, two layers so checkpointing has something to recompute.
TINY = Shape(
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=224,
    vocab=1024,
    seq_len=128,
    batches=(2, 1),
    warmup=1,
    steps=2,
)
LORA_R = 16


def build_model(shape: Shape, device: str, dtype):
    """The random Llama-shaped base, made on `device` in `dtype`, with LoRA r=16 on every
    linear layer of the decoder (the pipeline's method registry)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from models.methods import AdapterSpec, get_method

    config = LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        max_position_embeddings=max(8192, shape.seq_len),
        rope_theta=500000.0,
        tie_word_embeddings=False,
        use_cache=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    spec = AdapterSpec(r=LORA_R, alpha=2.0 * LORA_R, dropout=0.0, target_modules=TARGETS, seed=0)
    return get_method("lora").build(model, spec), matmul_params


def _step(model, optimizer, batch: dict, autocast_dtype) -> float:
    import torch

    from models.base_model.chunked_loss import causal_lm_loss

    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=device_type == "cuda"):
        loss = causal_lm_loss(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _batch(shape: Shape, batch_size: int, device: str) -> dict:
    import torch

    ids = torch.randint(0, shape.vocab, (batch_size, shape.seq_len), device=device)
    return {"input_ids": ids, "labels": ids}


def _fits(model, optimizer, shape: Shape, batch_size: int, device: str, dtype) -> bool:
    """Whether one whole step of `batch_size` rows runs without running out of CUDA memory
    (the step's memory is freed again either way)."""
    import torch

    try:
        _step(model, optimizer, _batch(shape, batch_size, device), dtype)
        return True
    except torch.OutOfMemoryError:
        pass
    # Outside the except block: the traceback's frames, which hold the step's tensors, are gone.
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    return False


def choose_batch(model, optimizer, shape: Shape, device: str, dtype) -> tuple[int, bool, list]:
    """(batch size, gradient checkpointing on, what did not fit): the largest batch that runs
    with checkpointing off, else with it on; RuntimeError if none does."""
    failed = []
    for checkpointing in (False, True):
        if checkpointing:
            kwargs = {"use_reentrant": False}  # the frozen embeddings' output needs no grad
            model.get_base_model().activation_checkpointing_enable(kwargs)
        for batch_size in shape.batches:
            if _fits(model, optimizer, shape, batch_size, device, dtype):
                return batch_size, checkpointing, failed
            failed.append(f"{batch_size}{' (checkpointing)' if checkpointing else ''}")
    raise RuntimeError(f"no batch of {shape.batches} x {shape.seq_len} fits, checkpointing on")


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def row_8b(row_type, device: str, shape: Shape = LLAMA3_8B, peak_flops: float | None = None):
    """The 8B-class row (see the module docstring); `row_type` is bench.gpu_check.Row."""
    import torch

    from bench.flops import flops_per_token, matmul_peak

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if peak_flops is None:
        peak_flops = matmul_peak(device, dtype, 8192 if device == "cuda" else 512)
    started = time.perf_counter()
    model, matmul_params = build_model(shape, device, dtype)
    built = time.perf_counter() - started
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device == "cuda")
    batch_size, checkpointing, failed = choose_batch(model, optimizer, shape, device, dtype)
    batch = _batch(shape, batch_size, device)
    for _ in range(shape.warmup - 1):
        _step(model, optimizer, batch, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timed_from = time.perf_counter()
    for _ in range(shape.steps):
        loss = _step(model, optimizer, batch, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - timed_from
    tokens_per_second = shape.steps * batch_size * shape.seq_len / seconds
    flops = flops_per_token(matmul_params, n_trainable) * tokens_per_second
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    loss = float(loss)
    tried = f"; did not fit: batch {', '.join(failed)}" if failed else ""
    note = (
        f"batch {batch_size} x {shape.seq_len}, gradient checkpointing "
        f"{'on' if checkpointing else 'off'}{tried}; {shape.steps} timed steps after "
        f"{shape.warmup}; {_count(matmul_params)} matmul weights, adapter "
        f"{_count(n_trainable)}; peak MiB with the weights; built in {built:.1f} s; "
        f"loss {loss:.3f}"
    )
    ok = loss == loss and loss > 0  # not nan
    return row_type(
        f"train lora {'8B-class' if shape == LLAMA3_8B else 'tiny 8B-shaped'}",
        "ok" if ok else "FAILED",
        tokens_per_second,
        peak_mib,
        flops / peak_flops,
        note,
    )
