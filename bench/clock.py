"""Per-step times of a training, as a Trainer callback (transformers is imported with it, so
the suite's command line does not import this module)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Times the steps of every training it is passed to (`callbacks=[clock]`): `clock.reset()`
    before a training, `clock.step_seconds()` after it. A step's time runs from one step's
    start (on_step_begin, just before its training_step) to the next's, i.e. the whole cycle:
    batch, forward, backward, optimizer, callbacks. Arms that see the same batches in the same
    order can then be compared step by step, which the host's occasional multi-second stalls
    (STACK-FACTS) disturb far less than whole-run times."""

    def __init__(self) -> None:
        self._starts: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._starts.append(time.perf_counter())

    def reset(self) -> None:
        self._starts.clear()

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self._starts[:-1], self._starts[1:], strict=True)]
