"""`python -m bench [--only a,b] [--json] [--threads N]`: run the suite, print the table.

Benchmarks (each measured in fresh worker processes, see its module):
  overhead  1. pipeline train task vs plain Trainer + PEFT, tokens/s
  packing   2. training.packing vs padded batches: tokens/s and eval loss
  memory    3. peak training memory: LoRA-FA vs LoRA, VeRA, full fine-tuning
  adapter   4. adapter vs base size; base / merged / unmerged forward latency
  rerun     5. unchanged rerun vs first run of `loraflow run --skip-unchanged`
  flops     6. achieved training FLOP/s of a 100M+ model vs a measured matmul peak
  threads   7. speed: training.cpu_threads 1 vs one per core (CPU only)
  grad_ckpt 8. training.gradient_checkpointing on vs off: peak memory and tokens/s
  export   10. merge-and-export: streamed merge vs PEFT merge_and_unload, peak memory and time
  nightly  11. an unchanged nightly deployment run on the team stack (needs PostgreSQL)
  vocab    12. training.chunked_loss on vs off with a 128k vocabulary: peak memory, loss
  sharding 13. 1 vs 2 ranks, DDP vs FSDP: parameter bytes and peak memory per rank, tokens/s
  smollm2  14. 1 and 6 on a real model (SmolLM2-135M-Instruct, chat data), where the time goes
  data_scale 16. 10k and 200k chat conversations: preparation tokens/s, first step cold/warm, RSS

Trials, run only when named in --only (a change that was tried and not kept):
  compile   9. torch.compile vs eager: compile time, steady speedup, break-even steps

On CPU every worker runs with 1 torch thread unless --threads says otherwise (see threads).

Outside the suite (its own command, minutes and ~2x the base's bytes of disk):
  python -m bench.export_big --size 7b   the largest base exported here, peak RSS, to S3
  python -m bench.sharding_big           15. DDP vs FSDP on a 1.1B float32 base: peak memory per
                                         rank and phase, the plan beside it (~14 GB, 16 GiB free)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import sys
import time

from bench.measure import QUIET, OtherLoad
from bench.workers import BenchError

BENCHMARKS = (
    "overhead",
    "packing",
    "memory",
    "adapter",
    "rerun",
    "flops",
    "threads",
    "grad_ckpt",
    "export",
    "nightly",
    "vocab",
    "sharding",
    "smollm2",
    "data_scale",
)
TRIALS = ("compile",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run (default: all of {', '.join(BENCHMARKS)}; "
        f"trials, only by name: {', '.join(TRIALS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in every CPU worker (OMP_NUM_THREADS; default 1, the faster setting "
        "for the demo model, see the threads benchmark); 0 = torch's default, one per core",
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in BENCHMARKS + TRIALS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {BENCHMARKS + TRIALS}"
        )
    return args


def table(figures: list) -> str:
    rows = [
        "| # | figure | measured | goal | other load | command |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        load = f"{f.details['other_load']:.0%}"
        cells = [str(f.number), f.name, f.measured, f.goal, load]
        cells = [c.replace("|", "\\|") for c in cells]  # e.g. "|diff|" inside a cell
        rows.append(f"| {' | '.join(cells)} | `{f.command}` |")
    return "\n".join(rows)


def verdicts(figures: list) -> list[str]:
    """One line per figure with a goal: met, or missed (and whether the machine was busy)."""
    lines = []
    for f in figures:
        met = f.details.get("goal_met")
        if met is None:
            continue
        load = f.details["other_load"]
        if met:
            lines.append(f"goal {f.number}: met ({f.goal})")
        elif load >= QUIET:
            lines.append(
                f"goal {f.number}: missed ({f.goal}) while other processes used {load:.0%} of the "
                "CPUs; rerun it on a quiet machine before reading anything into it"
            )
        else:
            lines.append(f"goal {f.number}: MISSED ({f.goal}) on a quiet machine")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    import torch

    if args.threads and not torch.cuda.is_available():
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # workers inherit it
    else:
        args.threads = 0

    machine = (
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
        f"torch threads {args.threads or torch.get_num_threads()}, "
        f"Python {platform.python_version()}"
    )
    log(f"loraflow benchmarks on {machine}\n")
    started = time.perf_counter()
    figures = []
    for name in args.only:
        log(f"== {name}")
        t0 = time.perf_counter()
        if name == "threads" and torch.cuda.is_available():
            log("  (CPU only, skipped)\n")
            continue
        try:
            with OtherLoad() as load:
                figure = importlib.import_module(f"bench.{name}").run()
        except BenchError as e:
            print(f"bench: {name}: {e}", file=sys.stderr)
            return 1
        figure.details["seconds"] = time.perf_counter() - t0
        figure.details["other_load"] = load.share
        figures.append(figure)
        for line in [*figure.lines, load.describe()]:
            log(f"  {line}")
        log(f"  ({figure.details['seconds']:.0f} s)\n")
    total = time.perf_counter() - started
    if args.json:
        out = {"machine": machine, "total_seconds": total}
        out["figures"] = [dataclasses.asdict(f) for f in figures]
        print(json.dumps(out, indent=2))
    else:
        print(table(figures))
        print("", *verdicts(figures), sep="\n")
        print(f"\ntotal wall time {total:.0f} s ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
