"""`loraflow reproduce`: a registered version rebuilt elsewhere gives the same adapter bytes."""

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tests.flows.test_finetune import config


def test_reproduce_in_a_fresh_clone_then_detect_changed_base_weights(
    project, tiny_base, prefect_harness, tmp_path, monkeypatch
):
    from flows.finetune import finetune
    from flows.reproduce import reproduce

    base = tmp_path / "base"  # a copy this test may change later
    shutil.copytree(tiny_base, base)
    first = finetune(config(base, max_steps=6))
    assert first.version == "1"
    tracking = f"sqlite:///{project / 'mlflow.db'}"
    remote = project / ".loraflow" / "dvc-remote"

    # A fresh clone elsewhere: no data/, no DVC cache; its remote points at the shared one.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "data").exists()
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "modify", "local", "url", str(remote)],
        cwd=clone,
        check=True,
    )
    monkeypatch.chdir(clone)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    got = reproduce("models:/flowtest@champion")
    assert got.identical, got.differences
    assert got.rebuilt_sha256 == first.adapter_sha256
    assert got.differences == []

    # Changed base weights: reported, nothing trained.
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.01)
    model.save_pretrained(base)
    changed = reproduce(got.run_id)
    assert not changed.identical and changed.rebuilt_sha256 == ""
    assert changed.differences[0].startswith(f"base model {base}: weights sha256 recorded")

    # The command says the same and exits non-zero.
    loraflow = str(Path(sys.executable).parent / "loraflow")
    proc = subprocess.run(
        [loraflow, "reproduce", got.run_id], cwd=clone, capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"run {got.run_id}: NOT reproduced" in proc.stdout
    assert "weights sha256 recorded" in proc.stdout
