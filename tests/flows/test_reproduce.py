"""`loraflow reproduce`: a registered version rebuilt elsewhere gives the same adapter bytes."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import on_session_api
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
        [loraflow, "reproduce", got.run_id],
        cwd=clone,
        env=on_session_api(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"run {got.run_id}: NOT reproduced" in proc.stdout
    assert "weights sha256 recorded" in proc.stdout


NATIVE = torch.backends.cpu.get_cpu_capability()


@pytest.mark.skipif(NATIVE == "DEFAULT", reason="torch dispatches to its DEFAULT kernels here")
def test_reproduce_tells_identical_equivalent_and_different_apart(
    project, tiny_base, prefect_harness, tmp_path, capsys
):
    """The recorded run trains in a process whose kernels are lowered to torch's DEFAULT level
    (ATEN_CPU_CAPABILITY=default): other float summation order, other adapter bytes. Rebuilt
    here at the native level it is equivalent; with a recorded metric tampered, different."""
    from flows.console import EQUIVALENT_ONLY, NOT_REPRODUCED, REPRODUCED, print_reproduction
    from flows.reproduce import Reproduction, reproduce
    from models.registry.reproduction import METRIC_TOLERANCES
    from tasks.tracking import client

    config_file = tmp_path / "run.yaml"
    config_file.write_text(config(tiny_base, max_steps=6).to_yaml())
    loraflow = str(Path(sys.executable).parent / "loraflow")
    env = on_session_api(ATEN_CPU_CAPABILITY="default")
    proc = subprocess.run(
        [loraflow, "run", str(config_file)], cwd=project, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlf = client()
    (run,) = mlf.search_runs([mlf.get_experiment_by_name("loraflow").experiment_id])
    version = mlf.get_model_version("flowtest", "1")
    # The numeric environment is on the run and on the model version.
    for tags in (run.data.tags, version.tags):
        assert tags["env.cpu_capability"] == "DEFAULT"
        assert tags["env.var.ATEN_CPU_CAPABILITY"] == "default"
        assert tags["env.threads"] == str(torch.get_num_threads())
        assert tags["env.cpu"] and tags["env.torch_build"].startswith(torch.__version__)
        assert tags["env.gpu"] == ("none" if not torch.cuda.is_available() else tags["env.gpu"])

    got = reproduce(run.info.run_id)
    assert got.outcome == "equivalent", got
    assert got.rebuilt_sha256 != got.recorded_sha256 == run.data.tags["adapter_sha256"]
    assert 0 < got.max_abs_diff < 1e-3  # float noise, not another adapter
    assert [line.split(":")[0] for line in got.metrics] == list(METRIC_TOLERANCES)
    assert f"cpu_capability: recorded DEFAULT, here {NATIVE}" in got.environment
    assert "var.ATEN_CPU_CAPABILITY: recorded default, here not set" in got.environment
    assert print_reproduction(got) == EQUIVALENT_ONLY == 3
    out = capsys.readouterr().out
    assert f"run {got.run_id}: equivalent, not identical" in out
    assert "max abs tensor difference" in out and "likely cause" in out
    assert f"cpu_capability: recorded DEFAULT, here {NATIVE}" in out

    # A recorded metric far from what the same inputs give: different, and which metric says so.
    recorded_loss = run.data.metrics["adapter_eval_loss"]
    mlf.log_metric(run.info.run_id, "adapter_eval_loss", recorded_loss * 1.5)
    tampered = reproduce(run.info.run_id)
    assert tampered.outcome == "different" and not tampered.identical
    assert tampered.rebuilt_sha256 == got.rebuilt_sha256  # same bytes here as the rebuild above
    (line,) = [d for d in tampered.differences if d.startswith("eval_loss:")]
    assert line.startswith(f"eval_loss: recorded {recorded_loss * 1.5:.4f}, rebuilt")
    assert " > 1%" in line
    assert print_reproduction(tampered) == NOT_REPRODUCED == 1
    assert f"run {got.run_id}: NOT reproduced" in capsys.readouterr().out

    identical = Reproduction(got.run_id, "ab" * 32, "ab" * 32, outcome="identical")
    assert print_reproduction(identical) == REPRODUCED == 0
    assert "identical" in capsys.readouterr().out
