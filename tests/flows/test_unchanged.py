"""`loraflow run --skip-unchanged`'s fast path: decided before torch loads, recorded as a flow run;
any changed input still trains."""

import json
import os
import shutil
import subprocess
import sys

from models.config.file import load_config
from tasks.tracking import client
from tests.conftest import on_session_api

# Runs the CLI and reports which heavy modules the process imported.
DRIVER = (
    "import sys\n"
    "from flows.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = [m for m in ('torch', 'transformers', 'peft', 'mlflow') if m in sys.modules]\n"
    "print('heavy modules:', ','.join(heavy) or 'none')\n"
    "sys.exit(code)\n"
)


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


def cli_run(project, *args):
    """`loraflow run ... --skip-unchanged` in its own process, on the session's Prefect API."""
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, "run", *args, "--skip-unchanged"],
        cwd=project,
        env=on_session_api(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_an_unchanged_rerun_is_decided_without_torch_and_recorded_as_a_flow_run(
    project, tiny_base, prefect_harness
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.finetune import finetune
    from flows.unchanged import unchanged_champion_of
    from tests.flows.test_events import loraflow_events, wait_for
    from tests.flows.test_finetune import flow_run_artifacts

    base = shutil.copytree(tiny_base, project / "base")  # its weights change below
    cfg = write_config(project, base)
    first = finetune(load_config(cfg, []), skip_if_unchanged=True)  # no champion: trains
    assert first.promoted and not first.skipped

    out = cli_run(project, cfg)
    assert "fastskip: unchanged since champion v1, skipped; nothing trained" in out
    assert "heavy modules: none" in out  # the champion read without MLflow (registry_read)
    mlf = client()
    assert len(mlf.search_model_versions("name='fastskip'")) == 1  # nothing registered

    # The skip is a run of the finetune flow, named as the pipeline names it, with its reason.
    with get_client(sync_client=True) as prefect_client:
        runs = prefect_client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["finetune"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        skipped = wait_for(
            lambda: [
                e
                for e in loraflow_events(prefect_client, "fastskip")
                if e.event == "loraflow.model.skipped"
            ],
            "loraflow.model.skipped event",
        )
    run = runs[0]
    assert run.state.is_completed() and run.name == f"lora-base-{first.data_md5[:8]}"
    check = flow_run_artifacts(run.id)["retrain-check"].data
    assert (
        "### fastskip: unchanged, skipped" in check and f"champion v1 (run {first.run_id})" in check
    )
    assert skipped[0].payload["data_md5"] == first.data_md5
    assert dict(skipped[0].resource)["loraflow.model.version"] == "1"

    # Weights touched but equal are the same base; a changed weight or config field is not.
    weights = base / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert unchanged_champion_of(load_config(cfg, [])) is not None
    assert unchanged_champion_of(load_config(cfg, ["training.max_steps=5"])) is None
    original = weights.read_bytes()
    _perturb_weights(weights)
    assert unchanged_champion_of(load_config(cfg, [])) is None
    weights.write_bytes(original)

    # New data: the CLI falls through to the pipeline, which versions the data and trains.
    with (project / "data" / "train.jsonl").open("a") as f:
        f.write('{"prompt": "Repeat the words: cat\\nAnswer:", "completion": " cat"}\n')
    assert unchanged_champion_of(load_config(cfg, [])) is None
    out = cli_run(project, cfg)
    assert "registered fastskip v2 (challenger)" in out
    assert len(mlf.search_model_versions("name='fastskip'")) == 2


def _perturb_weights(path) -> None:
    """The same model with one weight changed (still loadable)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, path, metadata={"format": "pt"})
