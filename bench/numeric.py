"""`python -m bench.numeric`: do the adapter's bytes survive another x86 CPU? A proxy on one CPU.

Float results differ between CPUs because each library picks its code path by what the CPU
offers: torch's own kernels (ATEN_CPU_CAPABILITY: DEFAULT, AVX2, AVX512), MKL's GEMM
(MKL_ENABLE_INSTRUCTIONS; MKL_CBWR=COMPATIBLE pins it to one path on Intel and compatible
CPUs), oneDNN (ONEDNN_MAX_CPU_ISA) and glibc's libm (exp, log, ...: FMA variants, selectable
with GLIBC_TUNABLES=glibc.cpu.hwcaps=-FMA,...). Another CPU is simulated by hiding instruction
sets from each library in turn. Each row trains the demo LoRA in a fresh process (same data, seed
and steps) and reports the adapter's sha256 and tokens/s:

- plain mode: what a run does today, at each dispatch level of torch and MKL;
- strict mode (ATEN_CPU_CAPABILITY=default and MKL_CBWR=COMPATIBLE) under the same simulated
  CPUs. If its rows share one sha256 where the plain rows do not, the mode would be worth its
  price (the tokens/s ratio printed last); see docs/reproducibility.md for what was found.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.workers import run_worker

STRICT = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
# Another CPU, as each library would see it.
OTHER_CPUS = {
    "this CPU": {},
    "torch AVX2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "torch DEFAULT": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "MKL SSE4.2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "oneDNN AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "libm no FMA/AVX2": {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-FMA,-AVX2,-AVX512F"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}


def _work(steps: int, out: str, threads: int) -> dict:
    import torch

    from bench.assets import train_lora

    result = train_lora(Path(out), steps=steps, logging_steps=1000, cpu_threads=threads or None)
    return {
        "sha256": result.adapter_sha256,
        "tokens_per_second": result.tokens_per_second,
        "train_loss": result.train_loss,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def measure(steps: int, threads: int) -> list[dict]:
    """One row per (mode, simulated CPU): mode, cpu, sha256, tokens/s, torch's dispatch level."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-numeric-") as tmp:
        for mode, base_env in (("plain", {}), ("strict", STRICT)):
            for cpu, env in OTHER_CPUS.items():
                merged = {**base_env, **env}
                if mode == "strict" and "ATEN_CPU_CAPABILITY" in env:
                    continue  # strict pins torch's level: these rows equal "this CPU"
                n_threads = 1 if env.get("OMP_NUM_THREADS") == "1" else threads
                got = run_worker(
                    "bench.numeric",
                    {"steps": steps, "out": f"{tmp}/{mode}-{len(rows)}", "threads": n_threads},
                    env=merged,
                )
                rows.append({"mode": mode, "cpu": cpu, **got})
    return rows


def price(steps: int, threads: int, reps: int) -> dict[str, list[float]]:
    """tokens/s of plain and strict mode on this CPU, alternating, `reps` runs each."""
    runs: dict[str, list[float]] = {"plain": [], "strict": []}
    with tempfile.TemporaryDirectory(prefix="bench-numeric-price-") as tmp:
        for rep in range(reps):
            order = ("plain", "strict") if rep % 2 == 0 else ("strict", "plain")
            for mode in order:
                got = run_worker(
                    "bench.numeric",
                    {"steps": steps, "out": f"{tmp}/{mode}-{rep}", "threads": threads},
                    env=STRICT if mode == "strict" else {},
                )
                runs[mode].append(got["tokens_per_second"])
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.numeric", description=__doc__)
    parser.add_argument("--steps", type=int, default=200, help="LoRA steps per row")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per row")
    parser.add_argument(
        "--price", type=int, default=0, metavar="REPS", help="only the price: REPS runs per mode"
    )
    args = parser.parse_args(argv)
    if args.price:
        runs = price(args.steps, args.threads, args.price)
        plain, strict = (statistics.median(runs[m]) for m in ("plain", "strict"))
        for mode, values in runs.items():
            print(f"{mode} tokens/s: " + ", ".join(f"{v:,.0f}" for v in values))
        print(f"price: strict / plain median tokens/s = {strict / plain:.2f}")
        return
    rows = measure(args.steps, args.threads)
    print(
        f"| mode | simulated CPU | torch level | adapter sha256 | tokens/s |  ({args.steps} steps)"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['cpu']} | {r['cpu_capability']} | {r['sha256'][:16]} | "
            f"{r['tokens_per_second']:,.0f} |"
        )
    for mode in ("plain", "strict"):
        mode_rows = [r for r in rows if r["mode"] == mode]
        shas = {r["sha256"] for r in mode_rows}
        print(f"{mode}: {len(shas)} distinct adapter sha256 over {len(mode_rows)} rows")
    plain, strict = (
        next(r for r in rows if r["mode"] == m and r["cpu"] == "this CPU")
        for m in ("plain", "strict")
    )
    ratio = strict["tokens_per_second"] / plain["tokens_per_second"]
    print(f"price: strict / plain tokens/s on this CPU = {ratio:.2f}")
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):
        from bench.workers import worker_main

        worker_main(_work)
    else:
        main()
