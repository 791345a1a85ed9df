"""Checkpoints of one training: where they are, which are complete, what a resume reports.

The Trainer writes checkpoint-<step> directories; the marker file below is written after it
finished saving one, so a directory cut short (the process killed mid-save) is never resumed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

# Written into a checkpoint directory after the Trainer finished saving it: a directory without
# it was cut short (e.g. the process was killed mid-save) and is never resumed from.
CHECKPOINT_DONE = "loraflow-checkpoint-complete"


def checkpoint_step(path: str | Path) -> int:
    """checkpoint-<step> -> step."""
    return int(Path(path).name.rpartition("-")[2])


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint-<step> directory under checkpoint_dir, if any."""
    root = Path(checkpoint_dir)
    done = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.rpartition("-")[2].isdigit() and (p / CHECKPOINT_DONE).is_file()
    ]
    return max(done, key=checkpoint_step, default=None)


def checkpoint_marker(checkpoints: Path, on_checkpoint: Callable[[Path], None] | None):
    """A callback that marks each checkpoint complete once the Trainer saved it (rank 0)."""
    from transformers import TrainerCallback

    class Checkpointed(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            path = checkpoints / f"checkpoint-{state.global_step}"
            (path / CHECKPOINT_DONE).write_text(f"{state.global_step}\n")
            if on_checkpoint:
                on_checkpoint(path)

    return Checkpointed()


def resumed_figures(resume: Path, trainer, output):
    """(loss history, mean logged loss, steps) of a resumed run, the part before it included;
    output is None where the checkpoint was of the last step and nothing was trained.

    The Trainer averages over this session's steps only; the checkpoint carries the earlier logs.
    """
    finished = output is None
    log_history = (
        json.loads((resume / "trainer_state.json").read_text())["log_history"]
        if finished
        else trainer.state.log_history
    )
    history = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    logged = [loss for _, loss in history]
    train_loss = sum(logged) / len(logged) if logged else float("nan")
    steps = checkpoint_step(resume) if finished else output.global_step
    return history, train_loss, steps
