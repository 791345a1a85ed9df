"""`skip_if_unchanged`: one decision (tasks.retrain_check), made as the finetune flow's first stage
where the data is versioned as it stands, recorded once on that flow run; any changed input trains.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from models.config.file import load_config
from tasks.lineage import hash_inputs
from tasks.retrain_check import check_unchanged
from tasks.tracking import client
from tests.conftest import on_session_api

LORAFLOW = str(Path(sys.executable).parent / "loraflow")


def write_config(project, tiny_base, **training) -> str:
    raw = {
        "base_model": str(tiny_base),
        "data": {"path": "data", "max_seq_len": 64},
        "adapter": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 4, "batch_size": 8, "warmup_steps": 0, **training},
        "evaluation": {"max_examples": 8, "max_new_tokens": 4},
        "registry": {"model_name": "fastskip", "promote_metric": "eval_loss"},
    }
    (project / "run.yaml").write_text(json.dumps(raw))  # JSON is YAML
    return "run.yaml"


def cli_run(project, *args) -> str:
    """`loraflow run ... --skip-unchanged`, the installed command, on the session's Prefect API."""
    proc = subprocess.run(
        [LORAFLOW, "run", *args, "--skip-unchanged"],
        cwd=project,
        env=on_session_api(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def unchanged(cfg: str, *overrides: str):
    config = load_config(cfg, list(overrides))
    return check_unchanged.fn(model_name="fastskip", inputs=hash_inputs.fn(config))


def task_names(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect_client:
        runs = prefect_client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0] for run in runs}  # "<task name>-<3 characters>"


def test_an_unchanged_rerun_stops_at_its_first_stage_and_is_recorded_once(
    project, tiny_base, prefect_harness
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.finetune import finetune
    from tests.flows.test_events import loraflow_events, wait_for
    from tests.flows.test_finetune import flow_run_artifacts

    base = shutil.copytree(tiny_base, project / "base")  # its weights change below
    cfg = write_config(project, base)
    first = finetune(load_config(cfg, []), skip_if_unchanged=True)  # no champion: trains
    assert first.promoted and not first.skipped

    out = cli_run(project, cfg)
    assert "fastskip: unchanged since champion v1, skipped; nothing trained" in out
    mlf = client()
    assert len(mlf.search_model_versions("name='fastskip'")) == 1  # nothing registered

    # The skip is a run of the one finetune flow, named as the pipeline names it; it stopped at
    # its first stage (no checks, no dvc, no training) and recorded its reason once.
    with get_client(sync_client=True) as prefect_client:
        run = prefect_client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["finetune"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )[0]
        skipped = wait_for(
            lambda: [
                e
                for e in loraflow_events(prefect_client, "fastskip")
                if e.event == "loraflow.model.skipped"
            ],
            "loraflow.model.skipped event",
        )
    assert run.state.is_completed() and run.name == f"lora-base-{first.data_md5[:8]}"
    assert task_names(run.id) == {"hash-inputs", "check-services", "check-unchanged", "record-skip"}
    check = flow_run_artifacts(run.id)["retrain-check"].data
    assert (
        "### fastskip: unchanged, skipped" in check and f"champion v1 (run {first.run_id})" in check
    )
    assert len(skipped) == 1 and skipped[0].payload["data_md5"] == first.data_md5
    assert dict(skipped[0].resource)["loraflow.model.version"] == "1"

    # Weights touched but equal are the same base; a changed weight or config field is not.
    weights = base / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert unchanged(cfg).version == "1"
    assert unchanged(cfg, "training.max_steps=5") is None
    original = weights.read_bytes()
    _perturb_weights(weights)
    assert unchanged(cfg) is None
    weights.write_bytes(original)

    # New data: not versioned as it stands, so the flow versions it, then decides: it trains.
    with (project / "data" / "train.jsonl").open("a") as f:
        f.write('{"prompt": "Repeat the words: cat\\nAnswer:", "completion": " cat"}\n')
    assert hash_inputs.fn(load_config(cfg, [])) is None
    out = cli_run(project, cfg)
    assert "registered fastskip v2 (challenger)" in out
    assert len(mlf.search_model_versions("name='fastskip'")) == 2
    # Now versioned and equal to the new champion's: decided at the first stage again.
    assert unchanged(cfg).version == "2"


def _perturb_weights(path) -> None:
    """The same model with one weight changed (still loadable)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, path, metadata={"format": "pt"})
