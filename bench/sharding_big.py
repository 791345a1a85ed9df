"""Figure 15: FSDP's memory saving where the base dominates, and the plan held against it.

Figure 13's arms (1 rank; 2 ranks DDP; 2 ranks FSDP, gloo, one torch thread per rank) on a
Llama-shaped float32 base of ~1.1B parameters (hidden 2048, 22 layers, 4.1 GiB of weights,
random, built once by a worker), LoRA r=8 on all linear layers, short rows, a checkpoint at the
last step and the final adapter save, as a run with training.save_steps makes them.

Memory is the resident set of every training process (the worker's own for 1 rank, each
torchrun child's for 2; all with bench.workers.MEMORY_ENV, so freed memory leaves at once):
- process peak: the kernel's high-water mark (getrusage maxrss: the largest child's for 2);
- per rank and phase, sampled every 20 ms from /proc (the rank read from each child's
  environment): loading and the first step (until its log), the other steps, the checkpoint
  save (last log to its announcement) and the final save (announcement to the end); the
  resident set and its anonymous part (the rest is file pages mapped in: an unsharded load
  maps the whole safetensors file while it copies it, page cache shared by the ranks, which
  the samples see and the kernel's high-water mark did not here);
- rank 0's training peak as a run logs it (TrainResult.peak_memory_bytes, growth over
  trainer.train(), the checkpoint save inside it).
Beside each arm, `loraflow plan`'s per-rank estimate for the same spec (plan_run: weights per
rank + gathered layers + adapter state + activations), against the measured tensors of rank 0:
its resident parameters plus its training peak.

Its own command, outside the suite (minutes, ~14 GB at the default size; it refuses to start
with less than `need_gib` available): python -m bench.sharding_big [--hidden H --layers L]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.assets import require_demo_assets
from bench.flops import LargeRun, _build_large_base
from bench.measure import Figure
from bench.sharding import arm_spec
from bench.workers import MEMORY_ENV, BenchError, run_worker, worker_main

MiB = 1 << 20
GiB = 1 << 30
ARMS = ((1, "none"), (2, "none"), (2, "fsdp"))
PHASES = ("load + step 1", "steps", "checkpoint save", "final save")
GOAL = 0.6  # the largest FSDP process peak over DDP's


def _rss(pid: int) -> tuple[int, int]:
    """(resident set, its anonymous part) of `pid` in bytes; (0, 0) once it is gone. The rest
    is file pages mapped into it (e.g. a safetensors file), shared with other processes."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "RssAnon:")):
                    found[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found.get("VmRSS", 0), found.get("RssAnon", 0)


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in env:
        if entry.startswith(b"RANK="):
            return int(entry[5:])
    return None


class RankSampler:
    """Samples the resident set of this process (rank 0 of a 1-rank run) or of every torchrun
    worker below it, by rank, every `interval_s`: samples[rank] = [(time, bytes), ...]."""

    def __init__(self, ranks: int, interval_s: float = 0.02) -> None:
        self.ranks, self.interval_s = ranks, interval_s
        self.samples: dict[int, list[tuple[float, int]]] = {}
        self._stop = threading.Event()
        self._pids: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RankSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _workers(self) -> dict[int, int]:
        if self.ranks == 1:
            return {0: os.getpid()}
        if len(self._pids) < self.ranks:
            for launcher in children(os.getpid()):
                for pid in children(launcher):
                    rank = _rank(pid)
                    if rank is not None:
                        self._pids[rank] = pid
        return self._pids

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = time.perf_counter()
            for rank, pid in self._workers().items():
                rss, anon = _rss(pid)
                if rss:
                    self.samples.setdefault(rank, []).append((now, rss, anon))

    def peak(self, rank: int, start: float, end: float, anon: bool = False) -> int:
        """The largest sample of `rank` between start and end (its anonymous part: anon)."""
        samples = self.samples.get(rank, [])
        return max((s[2 if anon else 1] for s in samples if start <= s[0] < end), default=0)


def _work(ranks: int, sharding: str, large: dict, base: str, tmp: str) -> dict:
    from models.training.distributed import train_adapter_distributed
    from models.training.plan import plan_run
    from models.training.train import train_adapter

    run = LargeRun(**large)
    steps = run.warmup + run.steps
    # one checkpoint, at the last step
    spec = arm_spec(run, ranks, sharding, base, tmp, save_steps=steps)
    plan = plan_run(spec)
    stamps: dict[int, float] = {}
    saved: list[float] = []

    def on_log(logs: dict, step: int) -> None:
        if "loss" in logs:
            stamps[step] = time.perf_counter()

    kwargs = {
        "output_dir": Path(tmp) / "adapter",
        "on_log": on_log,
        "checkpoint_dir": Path(tmp) / "checkpoints",
        "on_checkpoint": lambda path: saved.append(time.perf_counter()),
    }
    started = time.perf_counter()
    with RankSampler(ranks) as sampler:
        if ranks == 1:
            result = train_adapter(spec, **kwargs)
            who = resource.RUSAGE_SELF
        else:
            result = train_adapter_distributed(spec, **kwargs)
            who = resource.RUSAGE_CHILDREN
    ended = time.perf_counter()
    bounds = (started, stamps[1], stamps[steps], saved[0] if saved else stamps[steps], ended)
    phases = {
        rank: {name: sampler.peak(rank, bounds[i], bounds[i + 1]) for i, name in enumerate(PHASES)}
        for rank in range(ranks)
    }
    anon = {
        rank: {
            name: sampler.peak(rank, bounds[i], bounds[i + 1], True)
            for i, name in enumerate(PHASES)
        }
        for rank in range(ranks)
    }
    # rank 0 every ~0.5 s: seconds since the start, resident MiB, anonymous MiB
    timeline = [
        (round(t - started, 2), b // MiB, a // MiB) for t, b, a in sampler.samples.get(0, [])[::25]
    ]
    return {
        "ranks": ranks,
        "sharding": sharding,
        "param_bytes_per_rank": result.param_bytes_per_rank,
        "peak_rss_per_rank": resource.getrusage(who).ru_maxrss * 1024,  # KiB on Linux
        "train_peak_bytes": result.peak_memory_bytes,  # rank 0's growth over trainer.train()
        "phase_peaks": phases,  # rank -> phase -> sampled peak RSS
        "phase_anon_peaks": anon,  # the same, anonymous memory only
        "timeline": timeline,
        "stamps": {
            "steps": {s: round(t - started, 2) for s, t in stamps.items()},
            "checkpoint": [round(t - started, 2) for t in saved],
        },
        "plan_peak_bytes": plan.est_peak_memory_bytes,
        "plan": plan.to_dict(),
        "tokens_per_second": run.steps
        * run.batch_size
        * run.seq_len
        * ranks
        / (stamps[steps] - stamps[run.warmup]),
        "train_loss": result.train_loss,
        "adapter_sha256": result.adapter_sha256,
    }


FIGURE_15 = LargeRun(hidden=2048, layers=22, seq_len=64, batch_size=1, warmup=1, steps=2)


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _largest(arm: dict, key: str) -> int:
    """The largest sampled peak of any rank in any phase (key: phase_peaks, phase_anon_peaks)."""
    return max(peak for phases in arm[key].values() for peak in phases.values())


def run(large: LargeRun = FIGURE_15, need_gib: float = 16.0) -> Figure:
    require_demo_assets()
    if _available() < need_gib * GiB:
        raise BenchError(
            f"sharding_big needs {need_gib:.0f} GiB of memory available and "
            f"{_available() / GiB:.1f} GiB is: wait for other work to end, or pass a smaller "
            "--hidden/--layers"
        )
    arms = {}
    with tempfile.TemporaryDirectory(prefix="bench-sharding-big-") as tmp:
        base, total_params, _ = run_worker(
            "bench.sharding_big",
            {"build": True, "large": dataclasses.asdict(large), "base": f"{tmp}/base"},
        )["built"]
        for ranks, sharding in ARMS:  # one after the other: never two arms' processes at once
            with tempfile.TemporaryDirectory(prefix="arm-", dir=tmp) as arm:
                arms[f"{ranks} {sharding}"] = run_worker(
                    "bench.sharding_big",
                    {
                        "ranks": ranks,
                        "sharding": sharding,
                        "large": dataclasses.asdict(large),
                        "base": base,
                        "tmp": arm,
                    },
                    env=MEMORY_ENV,
                    timeout=3600,
                )
    one, ddp, fsdp = (arms[f"{r} {s}"] for r, s in ARMS)
    ratio = fsdp["peak_rss_per_rank"] / ddp["peak_rss_per_rank"]
    anon_ratio = _largest(fsdp, "phase_anon_peaks") / _largest(ddp, "phase_anon_peaks")

    def measured_tensors(arm: dict) -> int:
        return arm["param_bytes_per_rank"] + arm["train_peak_bytes"]

    def row(name: str, arm: dict) -> list[str]:
        off = arm["plan_peak_bytes"] / measured_tensors(arm) - 1
        lines = [
            f"{name}: params {arm['param_bytes_per_rank'] / MiB:,.0f} MiB/rank, training peak "
            f"{arm['train_peak_bytes'] / MiB:,.0f} MiB (rank 0), process peak RSS "
            f"{arm['peak_rss_per_rank'] / MiB:,.0f} MiB (largest rank; sampled: "
            f"{_largest(arm, 'phase_peaks') / MiB:,.0f}, anonymous "
            f"{_largest(arm, 'phase_anon_peaks') / MiB:,.0f}), "
            f"{arm['tokens_per_second']:,.1f} tokens/s",
            f"  plan {arm['plan_peak_bytes'] / MiB:,.0f} MiB vs measured params + training "
            f"peak {measured_tensors(arm) / MiB:,.0f} MiB ({off:+.0%})",
        ]
        for rank, peaks in sorted(arm["phase_peaks"].items()):
            lines.append(
                f"  rank {rank} peak RSS (anonymous): "
                + ", ".join(
                    f"{phase} {peaks[phase] / MiB:,.0f} "
                    f"({arm['phase_anon_peaks'][rank][phase] / MiB:,.0f})"
                    for phase in PHASES
                )
                + " MiB"
            )
        return lines

    return Figure(
        number=15,
        name=f"sharding where the base dominates ({total_params / 1e9:.2f}B float32, CPU gloo)",
        measured=(
            "process peak RSS per rank 1 rank / DDP / FSDP "
            + " / ".join(f"{a['peak_rss_per_rank'] / MiB:,.0f}" for a in (one, ddp, fsdp))
            + f" MiB (FSDP {ratio:.2f}x DDP; anonymous {anon_ratio:.2f}x); tokens/s "
            + " / ".join(f"{a['tokens_per_second']:,.1f}" for a in (one, ddp, fsdp))
            + "; plan vs measured "
            + " / ".join(
                f"{a['plan_peak_bytes'] / measured_tensors(a) - 1:+.0%}" for a in (one, ddp, fsdp)
            )
        ),
        goal=f"FSDP's largest process peak <= {GOAL}x DDP's; plan within 25%",
        command="python -m bench.sharding_big",
        details={
            "arms": arms,
            "fsdp_over_ddp": ratio,
            "fsdp_over_ddp_anonymous": anon_ratio,
            "goal_met": ratio <= GOAL
            and all(
                abs(a["plan_peak_bytes"] / measured_tensors(a) - 1) <= 0.25
                for a in (one, ddp, fsdp)
            ),
        },
        lines=[
            large.describe(f"{total_params / 1e9:.2f}B params")
            + " per rank, 1 torch thread per rank, a checkpoint at the last step, then the save",
            *row("1 rank      ", one),
            *row("2 ranks DDP ", ddp),
            *row("2 ranks FSDP", fsdp),
        ],
    )


def _entry(build: bool = False, **request) -> dict:
    if build:
        large = LargeRun(**request["large"])
        base, total, matmul = _build_large_base(Path(request["base"]), large.hidden, large.layers)
        return {"built": [str(base), total, matmul]}
    return _work(**request)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sharding_big", description=__doc__)
    parser.add_argument("--hidden", type=int, default=FIGURE_15.hidden)
    parser.add_argument("--layers", type=int, default=FIGURE_15.layers)
    parser.add_argument("--need-gib", type=float, default=16.0, help="memory available to start")
    args = parser.parse_args(argv)
    large = dataclasses.replace(FIGURE_15, hidden=args.hidden, layers=args.layers)
    try:
        figure = run(large, need_gib=args.need_gib)
    except BenchError as e:
        print(f"bench.sharding_big: {e}", file=sys.stderr)
        return 1
    print(figure.name, *figure.lines, f"measured: {figure.measured}", sep="\n  ")
    import json

    print(json.dumps(figure.details, indent=1, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):
        worker_main(_entry)
    else:
        sys.exit(main())
