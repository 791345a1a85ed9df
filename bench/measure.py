"""A figure of the Performance table and what figures are measured with: other processes'
load, paired ratios of per-step times (bench.clock.StepClock), medians."""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Figure:
    """One row of the Performance table, plus the measurements behind it."""

    number: int
    name: str
    measured: str
    goal: str
    command: str
    details: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def median(values: list[float]) -> float:
    return statistics.median(values)


QUIET = 0.10  # other processes' share of all CPUs below which a machine counts as quiet


def _cpu_seconds() -> tuple[float, float]:
    """(busy seconds of all CPUs since boot incl. steal, CPU seconds of this process and its
    waited-for children)."""
    ours = sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, ours
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK"), ours


class OtherLoad:
    """Share of all CPUs that other processes (and the hypervisor: steal) used while a block ran:
    `with OtherLoad() as load: ...; load.share`. Side-by-side ratios hold up to moderate load,
    but a shared machine moves them (docs/performance.md), so the suite reports this per figure.
    Linux only (0.0 elsewhere)."""

    def __enter__(self) -> OtherLoad:
        self.share = 0.0
        self._start = (time.perf_counter(), *_cpu_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, ours0 = self._start
        busy1, ours1 = _cpu_seconds()
        wall = time.perf_counter() - wall0
        if busy0 and wall > 0:
            others = max(0.0, (busy1 - busy0) - (ours1 - ours0))
            self.share = min(1.0, others / (wall * (os.cpu_count() or 1)))

    @property
    def quiet(self) -> bool:
        return self.share < QUIET

    def describe(self) -> str:
        verdict = "quiet" if self.quiet else "BUSY: compare ratios from a quiet run"
        return f"other processes used {self.share:.0%} of the {os.cpu_count()} CPUs ({verdict})"


def paired_step_ratios(baseline_runs: list[dict], candidate_runs: list[dict]) -> list[float]:
    """baseline / candidate time of step i of paired runs (their "step_seconds"), for every step
    of every pair: the candidate's speed-up on each batch."""
    return [
        b / c
        for base, cand in zip(baseline_runs, candidate_runs, strict=True)
        for b, c in zip(base["step_seconds"], cand["step_seconds"], strict=True)
    ]
