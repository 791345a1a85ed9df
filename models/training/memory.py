"""Peak memory of a block of work: CUDA allocator peak, or the peak resident set on CPU."""

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


def peak_rss_bytes() -> int:
    """The kernel's high-water mark of this process's resident set (VmHWM; 0 if unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Set the high-water mark to the current resident set (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return peak_rss_bytes() > 0


def page_in(module: torch.nn.Module) -> None:
    """Read one value per memory page of every CPU parameter and buffer.

    Weights loaded from safetensors on CPU can stay mapped from the file and become resident
    only when first used, i.e. during the first training step; read here, they count in the
    memory in use before training, not in training's peak (as on CUDA, where they are
    allocated before it)."""
    with torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            if t.device.type == "cpu" and t.numel() and t.is_contiguous():
                t.view(-1)[:: max(1, _PAGE // t.element_size())].sum()


class PeakMemory:
    """Result holder: `peak_bytes` is the growth over the level at entry."""

    def __init__(self, kind: str) -> None:
        self.peak_bytes = 0
        self.kind = kind


@contextmanager
def track_peak_memory(device: str, interval_s: float = 0.02):
    """Measure the peak memory used by the block over what was in use when it started.

    CUDA: torch.cuda.max_memory_allocated after a reset. CPU on Linux: the kernel's exact
    high-water mark of the resident set, reset at entry (no cost while the block runs; blocks
    must not nest). Elsewhere a thread samples the resident set every `interval_s` (short spikes
    between samples can be missed, and the thread competes with training for the GIL).
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
    if reset_peak_rss():
        try:
            yield result
        finally:
            result.peak_bytes = max(peak_rss_bytes(), rss_bytes()) - start
        return
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
