"""Figure 6: achieved training FLOP/s of LoRA on a 100M+ parameter model vs a measured matmul peak.

A Llama-shaped model (hidden 1024, 8 layers, SwiGLU, the demo tokenizer) is built from a config
with random weights (values do not change the FLOP rate) and trained with the pipeline's
`train_adapter`: LoRA r=8 on all linear layers, rows of exactly `seq_len` tokens. Steps are
timed from the Trainer's per-step log after `warmup` steps. FLOPs per token: 4 N for the frozen
base (forward 2N, backward through the inputs 2N; no weight gradients), N = weights used in
matmuls (lm_head included, the embedding lookup not), plus 6 x the adapter's own parameters;
attention scores are not counted. The peak is the median of fp32 (bf16 on CUDA) square
matmuls in the same process, before and after training, the higher one.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.assets import DEMO_BASE, require_demo_assets, train_lora
from bench.data import write_long_data
from bench.measure import Figure, median
from bench.workers import device_kind, run_worker, worker_main


def matmul_peak(device: str, dtype, size: int, reps: int = 5) -> float:
    """Median FLOP/s of size x size matmuls."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    rates = []
    for _ in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * size**3 / (time.perf_counter() - started))
    return median(rates[1:])


def _build_large_base(out: Path, hidden: int, layers: int) -> tuple[Path, int, int]:
    """A Llama-shaped model with random weights and the demo tokenizer, saved to `out`; returns
    (out, all parameters, parameters of the matmul weights)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from demo import model_config

    tokenizer = AutoTokenizer.from_pretrained(str(DEMO_BASE))
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(tokenizer, hidden, layers, head_dim=64))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    total_params = sum(p.numel() for p in model.parameters())
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return out, total_params, matmul_params


def flops_per_token(matmul_params: int, trainable_params: int) -> int:
    """Training FLOPs per token of an adapter on a frozen base (the module docstring): 4 x the
    base's matmul weights + 6 x the trainable parameters, attention scores not counted."""
    return 4 * matmul_params + 6 * trainable_params


@dataclass(frozen=True)
class LargeRun:
    """The training of figures 6 and 8: a fresh Llama-shaped base of `hidden` x `layers`, batch
    `batch_size` x `seq_len` tokens, `steps` timed steps after `warmup`."""

    hidden: int = 1024
    layers: int = 8
    seq_len: int = 128
    batch_size: int = 4
    warmup: int = 1
    steps: int = 3

    def describe(self, params: str) -> str:
        return (
            f"Llama-shaped, hidden {self.hidden}, {self.layers} layers ({params}), LoRA r=8 "
            f"all linear, batch {self.batch_size} x {self.seq_len} tokens, {self.steps} timed "
            f"steps after {self.warmup}"
        )


def train_large_lora(tmp: Path, large: LargeRun, **options) -> dict:
    """LoRA r=8 on all linear layers of a fresh Llama-shaped base (hidden x layers), rows of
    exactly seq_len tokens, through the pipeline's train_adapter; `options` replace fields of
    its TrainSpec. Returns the TrainResult, the base's parameter counts and tokens/s timed from
    the Trainer's per-step log after `warmup` steps."""
    hidden, layers, seq_len = large.hidden, large.layers, large.seq_len
    batch_size, warmup, steps = large.batch_size, large.warmup, large.steps
    base, total_params, matmul_params = _build_large_base(tmp / "base", hidden, layers)
    data = write_long_data(tmp / "data", n=batch_size * (warmup + steps))
    stamps: dict[int, float] = {}

    def on_log(logs: dict, step: int) -> None:
        if "loss" in logs:
            stamps[step] = time.perf_counter()

    result = train_lora(
        tmp / "adapter",
        steps=warmup + steps,
        data={"path": str(data), "max_seq_len": seq_len, "too_long": "truncate"},
        on_log=on_log,
        save=False,
        base_model=str(base),
        learning_rate=1e-4,
        batch_size=batch_size,
        logging_steps=1,
        **options,
    )
    seconds = stamps[warmup + steps] - stamps[warmup]
    return {
        "result": result,
        "total_params": total_params,
        "matmul_params": matmul_params,
        "tokens_per_second": steps * batch_size * seq_len / seconds,
    }


def _work(large: dict, tmp: str) -> dict:
    import torch

    device = device_kind()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size = 8192 if device == "cuda" else 2048
    peak_before = matmul_peak(device, dtype, size)

    trained = train_large_lora(Path(tmp), LargeRun(**large), device=device)
    peak_after = matmul_peak(device, dtype, size)
    adapter_params = trained["result"].trainable_params
    per_token = flops_per_token(trained["matmul_params"], adapter_params)
    return {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "total_params": trained["total_params"],
        "matmul_params": trained["matmul_params"],
        "adapter_params": adapter_params,
        "tokens_per_second": trained["tokens_per_second"],
        "flops_per_token": per_token,
        "achieved_flops": per_token * trained["tokens_per_second"],
        "peak_flops": max(peak_before, peak_after),
        "peak_before_after": [peak_before, peak_after],
        "matmul_size": size,
    }


FIGURE_6 = LargeRun()


def run(large: LargeRun = FIGURE_6) -> Figure:
    require_demo_assets()
    with tempfile.TemporaryDirectory(prefix="bench-flops-") as tmp:
        got = run_worker("bench.flops", {"large": dataclasses.asdict(large), "tmp": tmp})
    efficiency = got["achieved_flops"] / got["peak_flops"]
    label = "MFU" if got["device"] == "cuda" else "of matmul peak"
    return Figure(
        number=6,
        name=f"FLOP efficiency: LoRA training on a {got['total_params'] / 1e6:.0f}M model",
        measured=(
            f"{got['achieved_flops'] / 1e9:.1f} GFLOP/s = {efficiency:.0%} {label} "
            f"({got['peak_flops'] / 1e9:.1f} GFLOP/s {got['dtype']}, {got['device']})"
        ),
        goal="report",
        command="python -m bench --only flops",
        details={**got, "efficiency": efficiency},
        lines=[
            large.describe(f"{got['total_params']:,} params, {got['matmul_params']:,} in matmuls")
            + f", adapter {got['adapter_params']:,} params; {got['dtype']}, {got['device']}, "
            f"{got['threads']} threads",
            f"{got['tokens_per_second']:.0f} tokens/s x {got['flops_per_token'] / 1e6:.0f} "
            f"MFLOP/token = {got['achieved_flops'] / 1e9:.1f} GFLOP/s",
            f"matmul peak ({got['matmul_size']}^2, before/after): "
            + " / ".join(f"{v / 1e9:.1f}" for v in got["peak_before_after"])
            + f" GFLOP/s -> {efficiency:.1%}",
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
