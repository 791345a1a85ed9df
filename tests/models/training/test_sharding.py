"""Sharded training (FSDP2) with 2 CPU processes on gloo against one process, and 2 nodes x 1
process against 1 node x 2 processes (two torchrun launchers meeting on loopback)."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.sharding_big import children
from models.hashing import file_sha256
from models.methods import AdapterSpec
from models.training.checkpoints import CHECKPOINT_DONE, checkpoint_step, latest_checkpoint
from models.training.distributed import DistributedTrainingError, train_adapter_distributed
from models.training.sharding import wrap_refusal
from models.training.train import train_adapter
from tests.models.training.test_train import tiny_spec

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=0)
STEPS = 6


def spec(tiny_base, tiny_data, method="lora", **fields):
    spec = tiny_spec(tiny_base, tiny_data, method, SPEC, steps=STEPS, logging_steps=1, **fields)
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, too_long="truncate"))


def curves(logs):
    """{step: (loss, grad_norm)} of the logged steps."""
    return {step: (r["loss"], r["grad_norm"]) for step, r in logs if "loss" in r}


def close(a, b, rel=1e-5):
    return abs(a - b) <= rel * abs(b)


@pytest.fixture(scope="module")
def fsdp_lora(tiny_base, tiny_data, tmp_path_factory):
    """One FSDP training, 1 node x 2 processes, with its relayed logs."""
    out = tmp_path_factory.mktemp("fsdp") / "adapter"
    logs = []
    result = train_adapter_distributed(
        spec(tiny_base, tiny_data, batch_size=8, num_processes=2, sharding="fsdp"),
        output_dir=out,
        on_log=lambda record, step: logs.append((step, record)),
    )
    return result, out, logs


def single(tiny_base, tiny_data, out, method="lora"):
    logs = []
    result = train_adapter(
        # one process with the global batch of the two above (2 x 8)
        spec(tiny_base, tiny_data, method, batch_size=16),
        output_dir=out,
        on_log=lambda record, step: logs.append((step, record)),
    )
    return result, logs


def assert_same_training(one, one_logs, two, two_logs, one_dir, two_dir):
    assert one.steps == two.steps == STEPS
    ref, got = curves(one_logs), curves(two_logs)
    assert sorted(ref) == sorted(got) == list(range(1, STEPS + 1))
    for step in ref:
        assert close(got[step][0], ref[step][0]), (step, got[step], ref[step])
        # AdamW is blind to a constant gradient scale, so equal adapters alone would not catch
        # gradients averaged wrongly over the ranks (e.g. scaled by the world size): the
        # gradient norm the Trainer logs before clipping must match the one-process gradient.
        assert close(got[step][1], ref[step][1]), (step, got[step], ref[step])
    a = load_file(one_dir / "adapter_model.safetensors")
    b = load_file(two_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow
def test_fsdp_two_processes_match_one(fsdp_lora, tiny_base, tiny_data, tmp_path):
    two, two_dir, two_logs = fsdp_lora
    one, one_logs = single(tiny_base, tiny_data, tmp_path / "one")
    assert_same_training(one, one_logs, two, two_logs, tmp_path / "one", two_dir)
    assert two.train_loss < two.loss_history[0][1]  # it learned
    assert two.adapter_sha256 == file_sha256(two_dir / "adapter_model.safetensors")
    # Each rank keeps half the base plus the whole (small) adapter.
    assert two.param_bytes_per_rank <= 0.55 * one.param_bytes_per_rank
    assert two.trainable_params == one.trainable_params
    assert two.total_params == one.total_params  # counted whole, not per shard


@pytest.mark.slow
def test_fsdp_adapter_is_a_standard_peft_adapter(fsdp_lora, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, adapter_dir, _ = fsdp_lora
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    with torch.no_grad():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, adapter_dir)
        after = model(ids).logits
        merged = model.merge_and_unload()(ids).logits
    assert not torch.allclose(before, after)  # the trained adapter changes the model
    assert torch.allclose(after, merged, atol=1e-5)


def kill_rank(rank: int) -> None:
    """SIGKILL the torchrun worker of `rank` started by this test process."""
    for launcher in children(os.getpid()):
        for worker in children(launcher):
            try:
                env = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                os.kill(worker, signal.SIGKILL)
                return
    raise AssertionError(f"no worker of rank {rank} found")


@pytest.mark.slow
def test_a_killed_rank_resumes_from_the_last_checkpoint_with_the_uninterrupted_adapter(
    tiny_base, tiny_data, tmp_path
):
    """Crash-safe as DDP: rank 1 is killed (SIGKILL) right after a checkpoint and the run ends
    as one clear error (torchrun ends its peers instead of leaving them waiting on a
    collective); the rerun resumes from the newest complete checkpoint and ends with the bytes
    of a run never interrupted. Dropout on: the RNG must come back too, not only the adapter,
    optimizer and schedule."""
    sharded = dataclasses.replace(
        spec(tiny_base, tiny_data, batch_size=8, num_processes=2, sharding="fsdp"),
        adapter=dataclasses.replace(SPEC, dropout=0.1),
        max_steps=12,
    )
    uninterrupted = train_adapter_distributed(sharded, output_dir=tmp_path / "whole")

    checkpoints = tmp_path / "checkpoints"
    resumable = dataclasses.replace(sharded, save_steps=3)
    announced = []

    def kill_rank_1_after_the_first(path: Path) -> None:
        announced.append(path)
        if len(announced) == 1:
            kill_rank(1)

    with pytest.raises(DistributedTrainingError, match="training with 2 processes failed"):
        train_adapter_distributed(
            resumable,
            output_dir=tmp_path / "killed",
            checkpoint_dir=checkpoints,
            on_checkpoint=kill_rank_1_after_the_first,
        )
    assert announced[0].name == "checkpoint-3"
    killed_at = checkpoint_step(latest_checkpoint(checkpoints))
    assert 3 <= killed_at < 12 and not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    # Every rank's optimizer, schedule and RNG state is in before the checkpoint counts.
    assert {p.name for p in latest_checkpoint(checkpoints).glob("loraflow-train-state-*")} == {
        "loraflow-train-state-rank0.pt",
        "loraflow-train-state-rank1.pt",
    }

    resumed = train_adapter_distributed(
        resumable, output_dir=tmp_path / "resumed", checkpoint_dir=checkpoints
    )
    assert resumed.resumed_from_step == killed_at and resumed.steps == 12
    assert resumed.adapter_sha256 == uninterrupted.adapter_sha256
    assert resumed.loss_history == uninterrupted.loss_history
    assert (checkpoints / "checkpoint-12" / CHECKPOINT_DONE).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora_plus"])  # its own optimizer, B at 16x the rate
def test_fsdp_with_a_method_of_its_own_optimizer(method, tiny_base, tiny_data, tmp_path):
    one, one_logs = single(tiny_base, tiny_data, tmp_path / "one", method)
    logs = []
    two = train_adapter_distributed(
        spec(tiny_base, tiny_data, method, batch_size=8, num_processes=2, sharding="fsdp"),
        output_dir=tmp_path / "two",
        on_log=lambda record, step: logs.append((step, record)),
    )
    assert_same_training(one, one_logs, two, logs, tmp_path / "one", tmp_path / "two")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_match_one_node_of_two(fsdp_lora, tiny_base, tiny_data, tmp_path):
    one_node, one_node_dir, _ = fsdp_lora
    nodes = dataclasses.replace(
        spec(tiny_base, tiny_data, batch_size=8, sharding="fsdp"),
        num_processes=1,
        num_nodes=2,
        rendezvous=f"127.0.0.1:{free_port()}",
    )
    results, errors = {}, []

    def node(name):
        try:
            results[name] = train_adapter_distributed(
                nodes, output_dir=tmp_path / name, job_id="two-nodes"
            )
        except Exception as err:  # reported below, with the other node's outcome
            errors.append(err)

    launchers = [threading.Thread(target=node, args=(name,)) for name in ("a", "b")]
    for launcher in launchers:
        launcher.start()
    for launcher in launchers:
        launcher.join(timeout=300)
    assert not errors and len(results) == 2, errors
    # One node held the global rank 0: it saved the adapter; the other trained only.
    saved = [r for r in results.values() if r.adapter_dir]
    assert len(saved) == 1 and [r.adapter_sha256 for r in results.values()].count("") == 1
    (first,) = saved
    assert first.steps == one_node.steps and first.loss_history == one_node.loss_history
    assert first.adapter_sha256 == one_node.adapter_sha256  # same ranks, same sums: same bytes
    assert first.param_bytes_per_rank == one_node.param_bytes_per_rank


@pytest.mark.slow
def test_a_sharded_save_gathers_no_frozen_weight_and_writes_the_same_bytes(tiny_base, tmp_path):
    """The adapter of a base sharded over 2 ranks is saved, at the end and in a checkpoint,
    without one collective that gathers (the profiler sees every gloo all_gather), and its
    file is byte for byte the one saved from the full gathered state dict, as it was before,
    which gathers every frozen weight."""
    worker = Path(__file__).with_name("sharded_save_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(worker), str(tiny_base), str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sharded"] > 0 and report["full_gathers"] >= report["sharded"]  # it can see
    assert report["saved_gathers"] == 0 and report["sharded_keys_in_saved"] == []
    saved = (tmp_path / "saved" / "adapter_model.safetensors").read_bytes()
    assert saved == (tmp_path / "full" / "adapter_model.safetensors").read_bytes()
    assert len(load_file(tmp_path / "saved" / "adapter_model.safetensors")) == 2 * 2 * 2  # A, B
    # Checkpoints: the pipeline's Trainer gathers nothing either; the plain one (PEFT handed the
    # model's sharded state dict) gathered every frozen weight, on every rank.
    gathered = report["checkpoint_gathers"]
    assert gathered["sharded"] == 0 and gathered["plain"] >= report["sharded"]
    for name in ("sharded", "plain"):
        assert (tmp_path / f"checkpoint-{name}" / "adapter_model.safetensors").read_bytes() == saved


@pytest.mark.slow
def test_the_pipelines_checkpoints_of_a_sharded_base_gather_no_frozen_weight(
    tiny_base, tiny_data, tmp_path
):
    """train_adapter itself, on a base sharded over 2 ranks with a checkpoint every step: the
    profiler over each checkpoint save sees no collective that gathers a tensor on either rank
    (with the Trainer's own save in train.py it saw 21 a save, every frozen weight: the test
    above), while over a training step it sees FSDP's gathers."""
    worker = Path(__file__).with_name("sharded_checkpoint_worker.py")
    train = spec(tiny_base, tiny_data, batch_size=8, num_processes=2, sharding="fsdp")
    train = dataclasses.replace(train, max_steps=2, save_steps=1)
    (tmp_path / "spec.json").write_text(json.dumps(train.to_dict()))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(worker), str(tmp_path / "spec.json"), str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"report-{rank}.json").read_text())
        assert report["step"] > 0, report  # the profiler sees FSDP's gathers
        assert report["saves"] == [0, 0], report  # a checkpoint at steps 1 and 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("arch", "shards"), [("llama", True), ("opt", True), ("gpt2", False)])
def test_the_check_refuses_a_base_whose_layers_the_fsdp_plan_misses(arch, shards):
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    config = CONFIG_MAPPING[arch](num_hidden_layers=2, hidden_size=64, num_attention_heads=2)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    refusal = wrap_refusal(skeleton, f"tiny-{arch}")
    if shards:
        assert refusal == ""
    else:  # GPT-2's layers are transformer.h.*, the plan names transformer.layers.*
        assert refusal.startswith("training.sharding fsdp: the FSDP plan of base model tiny-gpt2")
        assert "names none of its decoder layers" in refusal
