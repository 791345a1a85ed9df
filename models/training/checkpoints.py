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


def load_adapter_weights(model, weights: Path) -> None:
    """The trainable weights of a finished training, from its last checkpoint's adapter file."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(weights)))


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


# One per rank in a checkpoint of a base sharded as it loaded (training.sharding: fsdp): what the
# Trainer leaves out of such a checkpoint (TrainingArguments save_only_model).
TRAIN_STATE = "loraflow-train-state-rank{rank}.pt"


def _rng_state() -> dict:
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
    }


def _set_rng_state(saved: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(saved["python"])
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None:
        torch.cuda.set_rng_state(saved["cuda"])


def sharded_train_state(resume: Path | None):
    """A callback that keeps, for a base sharded as it loaded, the training state the Trainer
    refuses to checkpoint for one (it saves only the adapter and its own trainer_state.json):
    the optimizer, the learning-rate schedule and the RNG, one file per rank, saved before
    the checkpoint is marked complete and restored when resuming from `resume`.

    Only the frozen base is sharded (models.training.sharding): the adapter, and so the
    optimizer state, is whole on every rank and saves and loads as with DDP. Each state goes
    back where the Trainer restores its own: the optimizer and schedule once they exist (train
    begin), the RNG at the start of the resumed epoch when the checkpoint ended one (its
    `epoch` is whole), else just before the first resumed step, after the batches it skips.
    """
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    class ShardedTrainState(TrainerCallback):
        rng = None  # the resumed RNG state, until it is restored
        rng_at_epoch = False

        def on_save(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            path.mkdir(parents=True, exist_ok=True)  # rank 0 may not have made it yet
            train_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": lr_scheduler.state_dict(),
                "rng": _rng_state(),
            }
            torch.save(train_state, path / TRAIN_STATE.format(rank=args.process_index))
            dist.barrier()  # every rank's file is written before rank 0 marks it complete

        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
            if resume is None:
                return
            file = resume / TRAIN_STATE.format(rank=args.process_index)
            saved = torch.load(file, weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            lr_scheduler.load_state_dict(saved["scheduler"])
            self.rng, self.rng_at_epoch = saved["rng"], float(state.epoch or 0).is_integer()

        def on_epoch_begin(self, args, state, control, **kwargs):
            self._restore_rng(self.rng_at_epoch)

        def on_step_begin(self, args, state, control, **kwargs):
            self._restore_rng(True)

        def _restore_rng(self, now: bool) -> None:
            if self.rng is not None and now:
                _set_rng_state(self.rng)
                self.rng = None

    return ShardedTrainState()
