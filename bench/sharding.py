"""Figure 13: data-parallel training on 1 vs 2 ranks, DDP vs FSDP: memory per rank and speed.

LoRA r=8 on all linear layers of figure 6's Llama-shaped 101M model (hidden 1024, 8 layers,
random weights, built once), rows of exactly `seq_len` tokens, `batch_size` rows per rank,
through the pipeline's train_adapter (1 rank) and train_adapter_distributed (2 ranks, torchrun,
one torch thread per rank; `training.sharding` none = DDP, fsdp = the base sharded as it loads).
Each arm runs in a fresh worker process (with bench.workers.MEMORY_ENV, as figure 3).

Per rank: the parameter bytes it keeps (TrainResult.param_bytes_per_rank: its shards under
FSDP); rank 0's peak memory growth over `trainer.train()` (TrainResult.peak_memory_bytes, what
a run logs: gradients, optimizer state, activations, gathered layers); and the peak resident set
over the whole process (getrusage's maxrss: the worker's own for 1 rank, its largest torchrun
child's for 2), which also holds torch itself and the loading (figure 15, bench.sharding_big,
measures it by phase on a base 11x larger).
Tokens/s is the whole job's (all ranks), timed from the relayed per-step log after `warmup`.
"""

from __future__ import annotations

import dataclasses
import resource
import tempfile
import time
from pathlib import Path

from bench.assets import lora_spec, require_demo_assets
from bench.data import write_long_data
from bench.flops import LargeRun, _build_large_base
from bench.measure import Figure
from bench.workers import MEMORY_ENV, run_worker, worker_main

MiB = 1 << 20
ARMS = ((1, "none"), (2, "none"), (2, "fsdp"))


def arm_spec(run: LargeRun, ranks: int, sharding: str, base: str, tmp: str, **training):
    """One arm's run spec: LoRA on `base`, `ranks` processes, long rows written under `tmp`
    (warmup + timed steps of batch_size x seq_len per rank, one torch thread each)."""
    steps = run.warmup + run.steps
    data = write_long_data(Path(tmp) / "data", n=run.batch_size * ranks * steps)
    return lora_spec(
        steps=steps,
        data={"path": str(data), "max_seq_len": run.seq_len, "too_long": "truncate"},
        base_model=base,
        learning_rate=1e-4,
        batch_size=run.batch_size,
        logging_steps=1,
        num_processes=ranks,
        sharding=sharding,
        cpu_threads=1,
        **training,
    )


def _work(ranks: int, sharding: str, large: dict, base: str, tmp: str) -> dict:
    from models.training.distributed import train_adapter_distributed
    from models.training.train import train_adapter

    run = LargeRun(**large)
    steps = run.warmup + run.steps
    spec = arm_spec(run, ranks, sharding, base, tmp)
    stamps: dict[int, float] = {}

    def on_log(logs: dict, step: int) -> None:
        if "loss" in logs:
            stamps[step] = time.perf_counter()

    out = Path(tmp) / "adapter"
    if ranks == 1:
        result = train_adapter(spec, output_dir=out, on_log=on_log, save=False)
        who = resource.RUSAGE_SELF
    else:
        result = train_adapter_distributed(spec, output_dir=out, on_log=on_log)
        who = resource.RUSAGE_CHILDREN
    seconds = stamps[steps] - stamps[run.warmup]
    return {
        "ranks": ranks,
        "sharding": sharding,
        "param_bytes_per_rank": result.param_bytes_per_rank,
        "peak_rss_per_rank": resource.getrusage(who).ru_maxrss * 1024,  # KiB on Linux
        "train_peak_bytes": result.peak_memory_bytes,  # rank 0's growth over trainer.train()
        "tokens_per_second": run.steps * run.batch_size * run.seq_len * ranks / seconds,
        "train_loss": result.train_loss,
    }


FIGURE_13 = LargeRun(steps=2)


def run(large: LargeRun = FIGURE_13) -> Figure:
    require_demo_assets()
    arms = {}
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as tmp:
        base, total_params, _ = _build_large_base(Path(tmp) / "base", large.hidden, large.layers)
        for ranks, sharding in ARMS:
            with tempfile.TemporaryDirectory(prefix="arm-", dir=tmp) as arm:
                arms[f"{ranks} {sharding}"] = run_worker(
                    "bench.sharding",
                    {
                        "ranks": ranks,
                        "sharding": sharding,
                        "large": dataclasses.asdict(large),
                        "base": str(base),
                        "tmp": arm,
                    },
                    env=MEMORY_ENV,
                )
    one, ddp, fsdp = (arms[f"{r} {s}"] for r, s in ARMS)

    def row(name: str, arm: dict) -> str:
        return (
            f"{name}: params {arm['param_bytes_per_rank'] / MiB:,.1f} MiB/rank, training peak "
            f"{arm['train_peak_bytes'] / MiB:,.1f} MiB (rank 0), process peak RSS "
            f"{arm['peak_rss_per_rank'] / MiB:,.0f} MiB/rank, {arm['tokens_per_second']:,.0f} "
            f"tokens/s, loss {arm['train_loss']:.5f}"
        )

    return Figure(
        number=13,
        name=f"sharding: 1 vs 2 ranks, DDP vs FSDP ({total_params / 1e6:.0f}M model, CPU gloo)",
        measured=(
            "per rank params / training peak / process peak RSS, tokens/s: "
            + "; ".join(
                f"{name} {a['param_bytes_per_rank'] / MiB:,.0f} / "
                f"{a['train_peak_bytes'] / MiB:,.0f} / "
                f"{a['peak_rss_per_rank'] / MiB:,.0f} MiB, {a['tokens_per_second']:,.0f}"
                for name, a in (("1 rank", one), ("2 DDP", ddp), ("2 FSDP", fsdp))
            )
        ),
        goal="report (FSDP params/rank ~0.5x of 1 rank)",
        command="python -m bench --only sharding",
        details={"arms": arms},
        lines=[
            large.describe(f"{total_params / 1e6:.0f}M params")
            + " per rank, 1 torch thread per rank",
            row("1 rank      ", one),
            row("2 ranks DDP ", ddp),
            row("2 ranks FSDP", fsdp),
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
