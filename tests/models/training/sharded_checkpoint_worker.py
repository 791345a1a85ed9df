"""One torchrun process of test_sharding's checkpoint test: the pipeline's train_adapter on a
base sharded at load (FSDP2, gloo), checkpointing every step, with a Trainer callback that runs
the profiler over each checkpoint save (from the end of a step that saves to its on_save) and
over one training step, and counts the collectives that gather tensors in each: FSDP's
(`_allgather_base_`) and DTensor's (`all_gather_into_tensor`, how a sharded weight is made
whole). The Trainer's own checkpoint also gathers a few small objects (`allgather_`, pickled
state shared between ranks): those hold no weight and are not counted.

`python -m torch.distributed.run --standalone --nproc-per-node 2 THIS SPEC.json OUT`: each rank
writes OUT/report-<rank>.json; rank 0 also the adapter in OUT/adapter.
"""

import json
import os
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

from models.config.specs import TrainSpec
from models.training.train import train_adapter

TENSOR_GATHERS = ("_allgather_base_", "all_gather_into_tensor")


def gathers(prof) -> int:
    return sum(e.count for e in prof.key_averages() if any(g in e.key for g in TENSOR_GATHERS))


class GatherCount(TrainerCallback):
    """Gathers in each checkpoint save, and in the first training step (the profiler can see)."""

    def __init__(self):
        self.prof = None
        self.saves: list[int] = []
        self.step = None

    def _start(self):
        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.prof.start()

    def _stop(self) -> int:
        self.prof.stop()
        count, self.prof = gathers(self.prof), None
        return count

    def on_step_begin(self, args, state, control, **kwargs):
        if self.step is None and self.prof is None:
            self._start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is None:
            self.step = self._stop()
        self._start()  # the save (if this step saves) runs between here and on_save

    def on_save(self, args, state, control, **kwargs):
        self.saves.append(self._stop())

    def on_train_end(self, args, state, control, **kwargs):
        if self.prof is not None:
            self.prof.stop()
            self.prof = None


def main(spec_file: str, out: Path) -> None:
    rank = int(os.environ["RANK"])
    spec = TrainSpec.from_dict(json.loads(Path(spec_file).read_text()))
    counter = GatherCount()
    train_adapter(
        spec,
        output_dir=out / "adapter",
        save=rank == 0,
        checkpoint_dir=out / "checkpoints",
        callbacks=[counter],
    )
    report = {"saves": counter.saves, "step": counter.step}
    (out / f"report-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
