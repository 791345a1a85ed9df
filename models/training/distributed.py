"""Data-parallel training: `torchrun` processes running `train_adapter` (DDP, or FSDP with
spec.sharding), on one machine or on spec.num_nodes machines.

The caller's process launches `python -m torch.distributed.run --standalone --nproc_per_node N
-m models.training.distributed REQUEST` and stays the only one that talks to trackers: rank 0
prints each Trainer log as one `LORAFLOW_LOG {json}` line on stdout (relayed live to `on_log`),
saves the adapter and writes the TrainResult as JSON; the other ranks only train. Finished
checkpoints are announced the same way (`LORAFLOW_CHECKPOINT path`) and handed to
`on_checkpoint` in the caller. The TrainSpec travels as JSON; N is its num_processes and its
batch_size stays per process, so the global batch is N x batch_size (x grad_accum_steps).

Backend: NCCL on CUDA (one GPU per process), gloo on CPU, chosen by the Trainer from the device.

Several machines: every node runs this same call (the same train task, the same spec), and
torchrun's c10d rendezvous at spec.rendezvous (host:port, reachable from every node) joins
them under `job_id` into num_nodes x num_processes ranks. The global rank 0 logs, saves and
returns the adapter; on every other node the call returns the figures of its local rank 0 with
no adapter (adapter_dir ""). Checkpoints must then go to a directory all nodes share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from models.config.specs import TrainSpec
from models.errors import LoraflowError
from models.training.train import TrainResult, train_adapter

LOG_PREFIX = "LORAFLOW_LOG "
CHECKPOINT_PREFIX = "LORAFLOW_CHECKPOINT "


class DistributedTrainingError(LoraflowError):
    """A training process of a multi-process run failed."""


def train_adapter_distributed(
    spec: TrainSpec,
    *,
    output_dir: str | Path,
    extra_files: dict[str, str] | None = None,
    on_log: Callable[[dict[str, float], int], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    job_id: str = "loraflow",
) -> TrainResult:
    """train_adapter in spec.num_processes processes on each of spec.num_nodes machines; the
    result comes from the global rank 0 (on other nodes: their local rank 0, no adapter).
    job_id: the same on every node of one run (the rendezvous id)."""
    num_processes = spec.num_processes * spec.num_nodes
    if num_processes < 2:
        raise ValueError("num_processes x num_nodes must be >= 2 for a distributed run")
    with tempfile.TemporaryDirectory(prefix="loraflow-ddp-") as tmp:
        request = Path(tmp) / "request.json"
        result_file = Path(tmp) / "result.json"
        request.write_text(
            json.dumps(
                {
                    "spec": spec.to_dict(),
                    "run": {
                        "output_dir": str(output_dir),
                        "extra_files": extra_files,
                        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                    },
                    "result": str(result_file),
                }
            )
        )
        cmd = [
            sys.executable, "-m", "torch.distributed.run", *launch_arguments(spec, job_id),
            "-m", "models.training.distributed", str(request),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(LOG_PREFIX):
                record = json.loads(line[len(LOG_PREFIX) :])
                if on_log:
                    on_log(record["logs"], record["step"])
            elif line.startswith(CHECKPOINT_PREFIX):
                if on_checkpoint:
                    on_checkpoint(Path(line[len(CHECKPOINT_PREFIX) :].strip()))
            else:
                sys.stdout.write(line)
        code = proc.wait()
        if code != 0 or not result_file.is_file():
            raise DistributedTrainingError(
                f"training with {num_processes} processes failed (exit code {code}); "
                "see the log above"
            )
        return TrainResult.from_dict(json.loads(result_file.read_text()))


def launch_arguments(spec: TrainSpec, job_id: str = "loraflow") -> list[str]:
    """torchrun's arguments for the spec: one machine standalone, or several meeting at
    spec.rendezvous (c10d), each with spec.num_processes processes."""
    per_node = f"--nproc-per-node={spec.num_processes}"
    if spec.num_nodes == 1:
        return ["--standalone", per_node]
    if not spec.rendezvous:
        raise ValueError("training.rendezvous (host:port) is needed when num_nodes > 1")
    return [
        f"--nnodes={spec.num_nodes}", per_node, "--rdzv-backend=c10d",
        f"--rdzv-endpoint={spec.rendezvous}", f"--rdzv-id={job_id}",
    ]  # fmt: skip


def _worker(request_path: str) -> None:
    """One torchrun process: train; rank 0 relays logs, saves and writes the result."""
    import torch.distributed as dist

    request = json.loads(Path(request_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    def relay(logs: dict[str, float], step: int) -> None:
        if rank == 0:
            print(LOG_PREFIX + json.dumps({"logs": logs, "step": step}), flush=True)

    def announce(path: Path) -> None:
        print(CHECKPOINT_PREFIX + str(path), flush=True)

    result = train_adapter(
        TrainSpec.from_dict(request["spec"]),
        on_log=relay,
        on_checkpoint=announce,
        save=rank == 0,
        **request["run"],
    )
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if local_rank == 0:  # the global rank 0, or the first process of another node
        Path(request["result"]).write_text(json.dumps(result.to_dict()))


if __name__ == "__main__":
    _worker(sys.argv[1])
