"""Figure 8: `training.gradient_checkpointing` off vs on: peak training memory and speed.

LoRA r=8 on all linear layers of figure 6's Llama-shaped 101M model (hidden 1024, 8 layers,
random weights), rows of exactly `seq_len` tokens, through the pipeline's `train_adapter`. Each
arm trains in a fresh process (with bench.workers.MEMORY_ENV, as figure 3), so that one arm's
freed memory cannot hide the other's peak. The peak is train_adapter's own measurement, the one
a run logs as `peak_memory_bytes` (growth of the peak resident set over `trainer.train()` on
CPU, `max_memory_allocated` on CUDA); tokens/s is timed from the Trainer's per-step log after
`warmup` steps.

With checkpointing a decoder layer keeps only its input for the backward pass and runs its
forward again there: for a frozen base with LoRA that is about 6 N FLOPs per token instead of
4 N, so about 1.5x the time at best, for activations of one layer at a time instead of all.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from bench.assets import require_demo_assets
from bench.flops import LargeRun, train_large_lora
from bench.measure import Figure
from bench.workers import MEMORY_ENV, device_kind, run_worker, worker_main

MiB = 1 << 20


def _work(checkpointing: bool, large: dict, tmp: str) -> dict:
    trained = train_large_lora(
        Path(tmp),
        LargeRun(**large),
        device=device_kind(),
        gradient_checkpointing=checkpointing,
    )
    result = trained["result"]
    return {
        "total_params": trained["total_params"],
        "peak_bytes": result.peak_memory_bytes,
        "peak_kind": result.peak_memory_kind,
        "tokens_per_second": trained["tokens_per_second"],
        "train_loss": result.train_loss,
    }


FIGURE_8 = LargeRun(steps=2)


def run(large: LargeRun = FIGURE_8) -> Figure:
    require_demo_assets()
    arms = {}
    for checkpointing in (False, True):
        with tempfile.TemporaryDirectory(prefix="bench-grad-ckpt-") as tmp:
            arms["on" if checkpointing else "off"] = run_worker(
                "bench.grad_ckpt",
                {"checkpointing": checkpointing, "large": dataclasses.asdict(large), "tmp": tmp},
                env=MEMORY_ENV,
            )
    off, on = arms["off"], arms["on"]
    memory_ratio = off["peak_bytes"] / on["peak_bytes"]
    speed_ratio = on["tokens_per_second"] / off["tokens_per_second"]
    params = off["total_params"] / 1e6
    return Figure(
        number=8,
        name=f"gradient checkpointing on vs off: peak training memory, speed ({params:.0f}M model)",
        measured=(
            f"{memory_ratio:.2f}x lower peak ({off['peak_bytes'] / MiB:,.0f} -> "
            f"{on['peak_bytes'] / MiB:,.0f} MiB) at {speed_ratio:.2f}x the tokens/s "
            f"({on['tokens_per_second']:,.0f} vs {off['tokens_per_second']:,.0f})"
        ),
        goal="report (a switch: trade speed for memory)",
        command="python -m bench --only grad_ckpt",
        details={"arms": arms, "memory_ratio": memory_ratio, "speed_ratio": speed_ratio},
        lines=[
            large.describe(f"{params:.0f}M params")
            + f", a fresh process per arm; peak = {off['peak_kind']}",
            f"off: peak {off['peak_bytes'] / MiB:,.1f} MiB, {off['tokens_per_second']:,.0f} "
            f"tokens/s, loss {off['train_loss']:.5f}",
            f"on:  peak {on['peak_bytes'] / MiB:,.1f} MiB, {on['tokens_per_second']:,.0f} "
            f"tokens/s, loss {on['train_loss']:.5f}",
            f"memory {memory_ratio:.2f}x lower, speed {speed_ratio:.2f}x",
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
