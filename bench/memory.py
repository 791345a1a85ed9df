"""Figure 3: peak training memory of LoRA-FA vs LoRA, VeRA and full fine-tuning.

Each method trains in its own fresh process on the demo base at the same r, batch and sequence
length (every row exactly `seq_len` tokens), with the same Trainer settings. Measured:
- peak training memory: on CPU the growth of peak resident memory (VmHWM, reset just before
  `trainer.train()`) over what the process held then, with glibc returning freed memory at once
  (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_); on CUDA `max_memory_allocated` growth.
- saved activations: the bytes autograd keeps for the backward pass of one forward (distinct
  storages, parameters excluded), which is where LoRA-FA differs from LoRA.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.assets import DEMO_BASE, TARGETS, require_demo_assets
from bench.data import write_long_data
from bench.measure import Figure
from bench.workers import MEMORY_ENV, device_kind, run_worker, worker_main

METHODS = ("lora", "lora_fa", "vera", "full")
PAPER = "LoRA-FA paper: up to 1.4x lower overall memory than LoRA"
MiB = 1 << 20


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def saved_activation_bytes(model, batch: dict) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one forward pass."""
    import torch

    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    del loss
    return sum(seen.values())


def _work(method: str, r: int, batch_size: int, seq_len: int, steps: int, data: str) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from models.data import pad_batch, read_split, tokenize
    from models.loading import load_base
    from models.methods import AdapterSpec, get_method

    cuda = device_kind() == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model, tokenizer = load_base(str(DEMO_BASE), dtype=dtype, device="cuda" if cuda else "cpu")
    examples = read_split(Path(data) / "train.jsonl")
    features = tokenize(examples, tokenizer, seq_len, "truncate").features
    if method == "full":
        model.requires_grad_(True)
    else:
        spec = AdapterSpec(r=r, alpha=2.0 * r, dropout=0.0, target_modules=TARGETS, seed=0)
        model = get_method(method).build(model, spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args = TrainingArguments(
        output_dir=str(Path(data).parent / f"trainer-{method}"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        logging_steps=steps,
        seed=0,
        bf16=cuda,
        use_cpu=not cuda,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=lambda b: pad_batch(b, tokenizer.pad_token_id),
    )
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _vm("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS now
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _vm("VmHWM")
    model.train()
    device = "cuda" if cuda else "cpu"
    batch = {k: v.to(device) for k, v in pad_batch(features[:batch_size], 0).items()}
    return {
        "method": method,
        "trainable_params": trainable,
        "peak_growth_bytes": peak - before,
        "before_bytes": before,
        "saved_activation_bytes": saved_activation_bytes(model, batch),
        "kind": "cuda max_memory_allocated" if cuda else "cpu peak RSS (VmHWM)",
        "seconds": seconds,
    }


def run(*, r: int = 8, batch_size: int = 8, seq_len: int = 256, steps: int = 2) -> Figure:
    require_demo_assets()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        data = write_long_data(Path(tmp) / "data", n=batch_size * steps)
        for method in METHODS:
            rows[method] = run_worker(
                "bench.memory",
                {
                    "method": method,
                    "r": r,
                    "batch_size": batch_size,
                    "seq_len": seq_len,
                    "steps": steps,
                    "data": str(data),
                },
                env=MEMORY_ENV,
            )
    peak = {m: rows[m]["peak_growth_bytes"] for m in METHODS}
    saved = {m: rows[m]["saved_activation_bytes"] for m in METHODS}
    ratio = peak["lora"] / peak["lora_fa"]
    saved_ratio = saved["lora"] / saved["lora_fa"]
    lines = [
        f"demo base, r={r}, all linear layers, batch {batch_size} x {seq_len} tokens, "
        f"{steps} steps, one fresh process per method; {rows['lora']['kind']}",
        "| method | trainable | peak training MiB | saved activations MiB |",
        "|---|---|---|---|",
    ]
    for m in METHODS:
        lines.append(
            f"| {m} | {rows[m]['trainable_params']:,} | {peak[m] / MiB:.1f} | "
            f"{saved[m] / MiB:.1f} |"
        )
    lines.append(
        f"LoRA / LoRA-FA: peak {ratio:.2f}x, saved activations {saved_ratio:.2f}x ({PAPER})"
    )
    return Figure(
        number=3,
        name="memory: peak training memory, LoRA / LoRA-FA (and VeRA, full FT)",
        measured=(
            f"LoRA/LoRA-FA {ratio:.2f}x ({peak['lora'] / MiB:.0f} vs {peak['lora_fa'] / MiB:.0f}"
            f" MiB; VeRA {peak['vera'] / MiB:.0f}, full FT {peak['full'] / MiB:.0f}); saved "
            f"activations {saved_ratio:.2f}x"
        ),
        goal="report and explain (paper: up to 1.4x)",
        command="python -m bench --only memory",
        details={"rows": rows, "peak_ratio": ratio, "saved_ratio": saved_ratio},
        lines=lines,
    )


if __name__ == "__main__":
    worker_main(_work)
