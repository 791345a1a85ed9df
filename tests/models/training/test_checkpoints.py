"""Crash-safe training: a run killed mid-way resumes from its last checkpoint and ends with the
same adapter bytes as a run that was never interrupted."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.config.specs import TrainSpec
from models.methods import AdapterSpec
from models.training.checkpoints import CHECKPOINT_DONE, latest_checkpoint
from models.training.train import train_adapter
from tests.models.training.test_train import tiny_spec

REPO = Path(__file__).resolve().parents[3]
# Dropout on: resuming must restore the RNG too, not only weights and optimizer.
SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.1, target_modules=["q_proj", "v_proj"], seed=3)
STEPS = 60  # 256 examples / batch 8 = 32 steps per epoch: the run crosses an epoch boundary


def spec(tiny_base, tiny_data, method="lora", adapter=SPEC, **fields) -> TrainSpec:
    return tiny_spec(
        tiny_base,
        tiny_data,
        method,
        adapter,
        STEPS,
        warmup_steps=5,
        logging_steps=10,
        **fields,
    )


KILLED_RUN = """
import json, sys
from models.config.specs import TrainSpec
from models.training.train import train_adapter
spec, run = json.loads(sys.argv[1])
train_adapter(TrainSpec.from_dict(spec), **run)
"""


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_adapter(
    tiny_base, tiny_data, tmp_path
):
    whole = spec(tiny_base, tiny_data)
    uninterrupted = train_adapter(whole, output_dir=tmp_path / "whole")

    checkpoints = tmp_path / "checkpoints"
    resumable = dataclasses.replace(whole, save_steps=5)
    run = {"output_dir": str(tmp_path / "killed"), "checkpoint_dir": str(checkpoints)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, json.dumps([resumable.to_dict(), run])],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob(f"checkpoint-*/{CHECKPOINT_DONE}")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = int(latest_checkpoint(checkpoints).name.split("-")[1])
    assert killed_at < STEPS and not (tmp_path / "killed" / "adapter_model.safetensors").exists()

    resumed = train_adapter(resumable, output_dir=tmp_path / "resumed", checkpoint_dir=checkpoints)
    assert resumed.resumed_from_step >= killed_at
    assert resumed.steps == STEPS
    assert resumed.adapter_sha256 == uninterrupted.adapter_sha256
    assert (checkpoints / f"checkpoint-{STEPS}" / CHECKPOINT_DONE).is_file()
    # The loss history spans the whole run, the part before the kill included.
    assert [s for s, _ in resumed.loss_history] == list(range(10, STEPS + 1, 10))


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "method,adapter",
    [
        # Delta-LoRA moves base weights, which the checkpoint must carry.
        ("delta_lora", AdapterSpec(**{**SPEC.__dict__, "dropout": 0.0})),
        # LoRA+ has its own optimizer parameter groups.
        ("lora_plus", SPEC),
    ],
)
def test_interrupted_then_resumed_equals_uninterrupted(
    tiny_base, tiny_data, tmp_path, method, adapter
):
    args = spec(tiny_base, tiny_data, method, adapter, max_steps=24)
    whole = train_adapter(args, output_dir=tmp_path / "whole")

    def stop_at_step_10(path: Path) -> None:
        if path.name == "checkpoint-10":
            raise Interrupt

    checkpoints = tmp_path / "checkpoints"
    resumable = dataclasses.replace(args, save_steps=5)
    with pytest.raises(Interrupt):
        train_adapter(
            resumable,
            output_dir=tmp_path / "a",
            checkpoint_dir=checkpoints,
            on_checkpoint=stop_at_step_10,
        )
    resumed = train_adapter(resumable, output_dir=tmp_path / "b", checkpoint_dir=checkpoints)
    assert resumed.resumed_from_step == 10
    assert resumed.adapter_sha256 == whole.adapter_sha256


def test_a_checkpoint_cut_short_is_not_resumed_from(tiny_base, tiny_data, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    args = spec(tiny_base, tiny_data, max_steps=10, save_steps=5)
    train_adapter(args, output_dir=tmp_path / "a", checkpoint_dir=checkpoints)
    # As if the process died while writing checkpoint-10: no completion marker.
    (checkpoints / "checkpoint-10" / CHECKPOINT_DONE).unlink()
    assert latest_checkpoint(checkpoints).name == "checkpoint-5"
    again = train_adapter(args, output_dir=tmp_path / "b", checkpoint_dir=checkpoints)
    assert again.resumed_from_step == 5


@pytest.mark.parametrize("method", ["lora", "vera", "dora"])
def test_a_finished_training_is_taken_from_its_last_checkpoint(
    tiny_base, tiny_data, tmp_path, method
):
    """A run that failed after training (e.g. registry down) leaves the last step's checkpoint;
    the rerun takes those weights and trains no further step (with a constant learning rate one
    more step would change them)."""
    adapter = AdapterSpec(**{**SPEC.__dict__, "dropout": 0.0})
    args = spec(
        tiny_base, tiny_data, method, adapter, max_steps=10, lr_scheduler="constant", save_steps=5
    )
    checkpoints = tmp_path / "checkpoints"
    first = train_adapter(args, output_dir=tmp_path / "a", checkpoint_dir=checkpoints)
    again = train_adapter(args, output_dir=tmp_path / "b", checkpoint_dir=checkpoints)
    assert again.resumed_from_step == 10 and again.steps == 10
    assert again.adapter_sha256 == first.adapter_sha256
    assert again.loss_history == first.loss_history
