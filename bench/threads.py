"""Make it fast: `training.cpu_threads` 1 vs one thread per core, on the demo config (CPU only).

The demo model's matmuls are tiny (16 examples x ~15 tokens x 128 features), so a training
step is thousands of short ops; with two threads each op waits for the second thread, which on
a machine shared with other jobs is often descheduled. One worker alternates the pipeline's
`train_adapter` with both settings (same data, seed, steps); medians of tokens/s.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.assets import require_demo_assets, train_lora
from bench.measure import Figure, median
from bench.workers import run_worker, worker_main


def _train(threads: int, steps: int, out: Path) -> float:

    result = train_lora(out, steps=steps, warmup_steps=5, logging_steps=100, cpu_threads=threads)
    return result.tokens_per_second


def _work(steps: int, reps: int, cores: int, tmp: str) -> dict:
    settings = [1, cores]
    for threads in settings:
        _train(threads, 3, Path(tmp) / f"warmup-{threads}")
    runs: dict[str, list[float]] = {str(t): [] for t in settings}
    for rep in range(reps):
        for threads in settings if rep % 2 == 0 else list(reversed(settings)):
            runs[str(threads)].append(_train(threads, steps, Path(tmp) / f"{threads}-{rep}"))
    return runs


def run(*, steps: int = 15, reps: int = 3) -> Figure:
    require_demo_assets()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        runs = run_worker(
            "bench.threads", {"steps": steps, "reps": reps, "cores": cores, "tmp": tmp}
        )
    one, many = median(runs["1"]), median(runs[str(cores)])
    return Figure(
        number=7,
        name=f"speed: training.cpu_threads 1 vs {cores} (torch default), demo config",
        measured=f"{one / many:.2f}x ({one:,.0f} vs {many:,.0f} tokens/s)",
        goal="keep only if faster",
        command="python -m bench --only threads",
        details={"ratio": one / many, "runs": runs, "steps": steps},
        lines=[
            f"demo config, {steps} steps x {reps} alternating rounds (+ a warm-up of each)",
            "1 thread  tokens/s: " + ", ".join(f"{v:,.0f}" for v in runs["1"]),
            f"{cores} threads tokens/s: " + ", ".join(f"{v:,.0f}" for v in runs[str(cores)]),
            f"median ratio 1 thread / {cores}: {one / many:.2f}",
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
