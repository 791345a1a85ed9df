"""track_peak_memory on CPU: the exact peak of a block, not what is left at its end."""

import threading

import torch

from models.memory import reset_peak_rss, track_peak_memory

MiB = 1 << 20


def _spike(mib: int) -> None:
    buf = torch.ones(mib * MiB // 4)  # touched, so resident
    del buf


def test_peak_of_a_freed_spike_is_counted():
    assert reset_peak_rss(), "this test needs Linux /proc/self/clear_refs"
    with track_peak_memory("cpu") as memory:
        _spike(256)
    assert memory.kind == "cpu_rss_growth"
    assert 240 * MiB <= memory.peak_bytes < 320 * MiB  # 256 MiB, less what the block freed


def test_peak_starts_over_at_each_block():
    with track_peak_memory("cpu"):
        _spike(256)
    with track_peak_memory("cpu") as small:
        _spike(16)
    assert small.peak_bytes < 64 * MiB


def test_no_sampling_thread_while_the_block_runs():
    before = threading.active_count()
    with track_peak_memory("cpu"):
        assert threading.active_count() == before
