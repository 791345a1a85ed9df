"""Peak memory of a block of work: CUDA allocator peak, or sampled resident memory on CPU."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


class PeakMemory:
    """Result holder: `peak_bytes` is the growth over the level at entry."""

    def __init__(self, kind: str) -> None:
        self.peak_bytes = 0
        self.kind = kind


@contextmanager
def track_peak_memory(device: str, interval_s: float = 0.02):
    """Measure the peak memory used by the block over what was in use when it started.

    CUDA: torch.cuda.max_memory_allocated after a reset. CPU: a thread samples the process's
    resident set every `interval_s`; short spikes between samples can be missed.
    """
    if device == "cuda":
        result = PeakMemory("cuda_max_allocated")
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield result
        torch.cuda.synchronize()
        result.peak_bytes = torch.cuda.max_memory_allocated() - start
        return
    result = PeakMemory("cpu_rss_growth")
    start = rss_bytes()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.peak_bytes = max(peak[0], rss_bytes()) - start
